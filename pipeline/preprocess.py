"""`uv run python -m pipeline.preprocess`: the preprocess stage.

The code is in pipeline/stages/preprocess.py.
"""

from pipeline.stages.preprocess import cli

if __name__ == "__main__":
    cli()
