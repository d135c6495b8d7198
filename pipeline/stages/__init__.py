"""The DVC stages' drivers, fetch -> preprocess -> train -> evaluate (dvc.yaml).

Each reads params.yaml, calls the core and writes its outputs; `python -m pipeline.<stage>` runs
it. They import `core` and `tracking`, never each other, `sweeps`, `tools` or `app`.
"""
