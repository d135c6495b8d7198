"""`uv run python -m pipeline.train`: the train stage.

The code is in pipeline/stages/train.py.
"""

from pipeline.stages.train import cli

if __name__ == "__main__":
    cli()
