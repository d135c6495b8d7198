"""`uv run python -m pipeline.config`: regenerate or check params.yaml.

The code is in pipeline/core/config.py.
"""

from pipeline.core.config import cli

if __name__ == "__main__":
    cli()
