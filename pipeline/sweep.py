"""`uv run python -m pipeline.sweep`: Hydra multirun sweeps and the Optuna search.

The code is in pipeline/sweeps/main.py.
"""

from pipeline.sweeps.main import cli

if __name__ == "__main__":
    cli()
