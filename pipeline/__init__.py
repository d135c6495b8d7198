"""An image-classification pipeline: DVC stages, Hydra config, MLflow tracking, Keras models.

The modules in this folder are the commands users type, each a one-line forward to the package
that holds its code: `python -m pipeline.fetch|preprocess|train|evaluate` (the DVC stages),
`pipeline.sweep`, `pipeline.compare`, `pipeline.runs`, `pipeline.predict`, `pipeline.reproduce`,
`pipeline.app`, `pipeline.config` and `pipeline.stack`.

The packages, lowest first; a package imports only from those listed before it (tests/
test_layout.py checks it, and that no modules import each other in a cycle):

- `core`: names (of tags, metrics, artifacts and files; imports nothing), errors, paths, the
  config schema, data, images, the model, the training step, metrics and plots. No MLflow.
- `tracking`: the MLflow store, runs, the registry, models read from the store, provenance, and
  the experiment (one model's run: `model_run`, `train`, `train_model`, `evaluate_model`).
- `stages`: the DVC stages' drivers.
- `sweeps`: the Hydra side of sweeps, the search, statistics, summaries, background evaluation.
- `tools`: what users run beside the stages: compare, runs, predict, reproduce.
- `app`: the web app, its templates and static files.
- `stack`: the team's services (PostgreSQL, an S3 store, MLflow's server, Ray, SLURM).
"""

import sys

# The commands keep the bytecode Python compiles for what they import, in the project's own
# environment, even where PYTHONDONTWRITEBYTECODE is set: otherwise every command would compile
# TensorFlow's modules again (10 s on 2 cores). uv compiles nothing (its `compile-bytecode` would
# compile the whole environment at every `uv run`), so the first command that imports a module
# compiles it, once.
sys.dont_write_bytecode = False
