"""MLflow tracking: `store` (where runs go), `runs` (one run's calls), `registry` (versions and
the champion), `models` (models read from the store, checked before they load), `choose` (the
model a command or the app reads pictures with), `provenance` (git state, digests, versions) and
`experiment` (one model's run, from its config to its logged model and test metrics).

Imports `core` only. MLflow is imported by the modules that use it; `provenance` does not.
"""
