"""The names one module writes into a run and another reads: tags, metrics, artifacts, files.

Import-free on purpose: statistics, metrics, summaries and the tools import it without loading
MLflow. Every name a run, a sweep folder or the registry carries is spelled here once.
"""

# ---- tags ------------------------------------------------------------------------------------
FAILURE_TAG = "failure_reason"
RESUMED_FROM_TAG = "resumed_from"  # a training resumed from a checkpoint: the run that made it
RESUMED_AT_TAG = "resumed_at_epoch"  # ... and its epoch
HOST_TAG, PID_TAG = "host", "pid"  # the process that has the run open
MODEL_URI_TAG = "model_uri"
MODEL_SHA256_TAG = "model_sha256"  # of models/model.keras: evaluate checks it before loading
LOGGED_SHA256_TAG = "logged_model_sha256"  # of the logged data/model.keras: checked before loading
WEIGHTS_SHA256_TAG = "weights_sha256"  # of every weight array: reproduce compares it
REGISTERED_TAG = "registered_version"
DATASET_TAG = "dataset"  # data.name of the model's dataset
DESCRIPTION_TAG = "dataset_description"  # data.description: what its pictures show
HANDWRITING_TAG = "handwriting"  # data.handwriting: how predict and the app read a picture
CLASSES_TAG = "classes"  # its class names in label order, as JSON: predict and the app show them
CHAMPION_TAG = "champion"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a child under its parent
SWEEP_TAG, SWEEP_PARENT = "sweep", "parent"  # a sweep's parent run: sweep=parent
OVERRIDES_TAG = "sweep_overrides"
RAY_NODE_TAG = "ray.node_id"  # a sweep job run by Ray: the node it ran on
RAY_TASK_TAG = "ray.task_id"  # ... and its task, the same in every attempt Ray makes of it
TRAINED_IN_TAG = "trained_in"  # a checkpoint's run: the run whose longer training made it
SLURM_JOB_TAG = "slurm.job_id"  # a sweep job run by SLURM: its job id (ARRAY_TASK for an array)
FIGURES_TAG = "figures"  # a model's figures: drawn, or on demand (`pipeline.runs --figures`)
FIGURES_DRAWN, FIGURES_ON_DEMAND = "drawn", "on demand"
BEST_TAG = "best_config"  # on a sweep's parent: its best configuration

# MLflow's own source tags: the UI's Source, Version and User columns, and MLflow's tooling.
SOURCE_COMMIT = "mlflow.source.git.commit"
SOURCE_BRANCH = "mlflow.source.git.branch"
SOURCE_NAME = "mlflow.source.name"  # the entry point: pipeline/train.py, pipeline/sweep.py
SOURCE_TYPE = "mlflow.source.type"
USER = "mlflow.user"

# Provenance (tracking/provenance.py writes them, reproduce reads them). GIT_COMMIT repeats
# SOURCE_COMMIT for readers of runs made before the standard tag; it goes in the next release.
GIT_COMMIT = "git_commit"
GIT_BRANCH = "git_branch"
GIT_DIRTY = "git_dirty"
PARAMS_SHA256 = "params_sha256"
UV_LOCK_SHA256 = "uv_lock_sha256"
REPRODUCES = "reproduces"
DATA_PREFIX = "data."  # data.<file>.sha256
ENV_PREFIX = "env."  # env.python, env.cpu, env.<package>
NOT_IN_GIT = "none"

# ---- metrics ---------------------------------------------------------------------------------
TEST_ACCURACY, TEST_LOSS, MACRO_F1 = "test_accuracy", "test_loss", "macro_f1"
VAL_ACCURACY = "val_accuracy"
TRAIN_SECONDS = "train_seconds"
F1_CLASS = "f1_class_{}"

# ---- artifacts -------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.yaml"
DIFF_ARTIFACT = "uncommitted.diff"
FIGURES_ARTIFACT = "figures"
FIGURE_DATA_FILE = "figure_data.npz"  # what a model's figures are drawn from, when on demand
# A model's figures, files under FIGURES_ARTIFACT (core/plots.py draws them)
PREDICTIONS_FIGURE = "predictions.png"
MISCLASSIFIED_FIGURE = "misclassified.png"
CONFUSION_FIGURE = "confusion_matrix.png"
CURVES_FIGURE = "learning_curves.png"
MODEL_FIGURES = (PREDICTIONS_FIGURE, MISCLASSIFIED_FIGURE, CONFUSION_FIGURE, CURVES_FIGURE)
MODEL_ARTIFACT = "model"
SUMMARY_ARTIFACT = "summary.csv"

# ---- the registry ----------------------------------------------------------------------------
CHAMPION = "champion"  # the registry alias of the best model
# MLflow's UI opens an experiment of this kind on its training runs, not on the GenAI overview.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# A registered version's evidence for the `champion` alias (tracking/registry.py)
PROMOTION_RULE = "promotion.rule"  # registry.promote and registry.alpha
PROMOTION_EXAMPLES = "promotion.examples"  # how many, and which split
PROMOTION_EXAMPLES_SHA256 = "promotion.examples_sha256"
PROMOTION_ACCURACY = "promotion.accuracy"  # this version's, on those examples
PROMOTION_AGAINST = "promotion.champion_version"  # the champion it was judged against
PROMOTION_CHAMPION_ACCURACY = "promotion.champion_accuracy"
PROMOTION_ONLY_THIS = "promotion.only_this_right"  # examples only this version gets right
PROMOTION_ONLY_CHAMPION = "promotion.only_champion_right"
PROMOTION_P_VALUE = "promotion.p_value"  # exact one-sided McNemar
PROMOTION_DECISION = "promotion.decision"
PROMOTED, FIRST_CHAMPION = "promoted", "first champion"
TRAINED_ON_ARTIFACT = "trained_on.npy"  # a registered model's training examples' keys

# ---- a sweep's folder ------------------------------------------------------------------------
PARENT_FILE = "parent_run.json"  # in the sweep folder: where jobs log
JOB_FILE = "job.json"  # in each job's folder: how it ended, also when it made no run
RUNS_CSV = "runs.csv"  # in the sweep folder and the parent run: one row per model
SUMMARY_TABLE = "summary.json"  # the summary as an MLflow table on the parent run
