"""The core: names, errors, paths, the config schema, data, images, the model, the training step
(`training`, with XLA's cache of what it compiled: `compile_cache`), metrics and plots; plain
functions over plain values.

Imports nothing else of the pipeline, and never MLflow. Heavy libraries are imported where they
are used: TensorFlow and Keras in `model` and `training` (and by `console.load_keras`, which
imports them quietly for a command about to train or predict), matplotlib in `plots`; the rest
(names, config, data, metrics, errors, paths) loads none of them.
"""
