"""`uv run python -m pipeline.predict`: classify image files with a trained model.

The code is in pipeline/tools/predict.py.
"""

from pipeline.tools.predict import cli

if __name__ == "__main__":
    cli()
