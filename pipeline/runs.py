"""`uv run python -m pipeline.runs`: runs left RUNNING, and their cleanup.

The code is in pipeline/tools/runs.py.
"""

from pipeline.tools.runs import cli

if __name__ == "__main__":
    cli()
