"""MLflow tracking: `names` (import-free), `store`, `runs`, `registry`, and `provenance`.

`names` holds every tag, metric, artifact and file name one module writes and another reads; it
imports nothing, so statistics, summaries and tools can use it without loading MLflow. `store`,
`runs` and `registry` use MLflow; `provenance` (git state, digests, versions) does not. Imports
from `pipeline.core` only its foundations (errors, paths, config, data), never the experiment.
"""
