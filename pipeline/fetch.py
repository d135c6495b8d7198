"""`uv run python -m pipeline.fetch`: the fetch stage.

The code is in pipeline/stages/fetch.py.
"""

from pipeline.stages.fetch import cli

if __name__ == "__main__":
    cli()
