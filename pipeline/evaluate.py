"""`uv run python -m pipeline.evaluate`: the evaluate stage.

The code is in pipeline/stages/evaluate.py.
"""

from pipeline.stages.evaluate import cli

if __name__ == "__main__":
    cli()
