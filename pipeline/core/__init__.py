"""The core: names, errors, paths, the config schema, data, images (pictures of any kind into
inputs), a folder of pictures (`folder`), the prepared splits (`prepare` writes them as `shards`;
`streaming` reads a large one through tf.data), the model, the training step (`training`, with
XLA's cache of what it compiled: `compile_cache`), metrics and plots; plain functions over plain
values.

Imports nothing else of the pipeline, and never MLflow. Heavy libraries are imported where they
are used: TensorFlow and Keras in `model`, `training` and `streaming` (and by
`console.load_keras`, which imports them quietly for a command about to train or predict),
matplotlib in `plots`; the rest (names, config, data, images, folder, shards, prepare, metrics,
errors, paths) loads none of them: fetch and preprocess run without TensorFlow.
"""
