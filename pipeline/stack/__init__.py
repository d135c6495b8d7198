"""The team's stack, started for real on 127.0.0.1: PostgreSQL, an S3 object store (SeaweedFS) and
an authenticated MLflow server storing artifacts in it, with DVC's remote in the same bucket.

`python -m pipeline.stack up|status|env|down` (__main__.py) drives it; team.py holds a stack's
folder, settings and secrets; services.py the services; processes.py how they are started and
stopped; tls.py the certificates of `up --tls`. It imports core's errors and paths, and loads
neither TensorFlow nor MLflow's client: the server runs in processes of its own.
"""
