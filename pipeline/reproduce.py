"""`uv run python -m pipeline.reproduce`: re-run a logged run from its commit and compare.

The code is in pipeline/tools/reproduce.py.
"""

from pipeline.tools.reproduce import cli

if __name__ == "__main__":
    cli()
