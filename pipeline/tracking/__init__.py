"""MLflow tracking: `names` (import-free), `store`, `runs`, `registry`, `models` (models read from
the store, checked before they load) and `provenance`.

`names` holds every tag, metric, artifact and file name one module writes and another reads; it
imports nothing, so statistics, summaries and tools can use it without loading MLflow. `store`,
`runs`, `registry` and `models` use MLflow; `provenance` (git state, digests, versions) does
not. Imports from `pipeline.core` only its foundations (errors, paths, config, data, model),
never the experiment.
"""
