"""The core: config schema, data, model, the training loop, metrics, plots and the experiment.

Imports only `pipeline.tracking.names`, except `experiment`, which trains and evaluates one
model into one MLflow run through `pipeline.tracking`. Heavy libraries are imported where they
are used: TensorFlow in `model` (and where a model is trained), matplotlib in `plots`; the rest
imports neither, nor MLflow.
"""
