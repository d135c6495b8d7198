"""`uv run python -m pipeline.compare`: leaderboards and summaries of runs.

The code is in pipeline/tools/compare.py.
"""

from pipeline.tools.compare import cli

if __name__ == "__main__":
    cli()
