"""`uv run python -m pipeline.app`: the web app (pipeline/app/server.py)."""

from pipeline.app.server import cli

cli()
