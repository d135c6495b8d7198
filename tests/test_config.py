from pathlib import Path

import pytest
import yaml

from helpers import ROOT, copy_project, run, run_stage
from pipeline.core.config import (
    CNNConfig,
    Config,
    MLPConfig,
    compose,
    load_params,
    params_yaml_text,
    to_yaml,
    validate,
)
from pipeline.core.errors import ConfigError


def test_params_yaml_is_conf_composed() -> None:
    """params.yaml is generated: regenerate with `uv run python -m pipeline.config`."""
    assert (ROOT / "params.yaml").read_text() == params_yaml_text()


def test_default_is_the_seed_model(default_config: Config) -> None:
    assert default_config.model == MLPConfig(name="mlp", hidden_units=128)
    train = default_config.train
    assert (train.epochs, train.batch_size, train.optimizer, train.learning_rate) == (
        5,
        32,
        "adam",
        0.001,
    )
    assert train.loss == "sparse_categorical_crossentropy" and train.metrics == ["accuracy"]
    assert train.max_examples is None
    assert 0 < default_config.data.val_fraction < 1
    assert default_config.tracking.experiment_name == "mnist"


@pytest.mark.parametrize("option", sorted(p.stem for p in (ROOT / "conf/model").glob("*.yaml")))
def test_every_model_option_composes(option: str) -> None:
    cfg = validate(compose([f"model={option}"]))
    assert cfg.model.name == option
    assert isinstance(cfg.model, {"mlp": MLPConfig, "cnn": CNNConfig}[option])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.hidden_units=-3", "model.hidden_units must be an integer > 0, received -3"),
        ("model.hidden_units=0", "model.hidden_units must be an integer > 0, received 0"),
        ("model.hidden_units=abc", "model.hidden_units must be an integer, received 'abc'"),
        ("train.epochs=0", "train.epochs must be an integer > 0, received 0"),
        ("train.epochs=2.5", "train.epochs must be an integer, received 2.5"),
        ("train.epochs=true", "train.epochs must be an integer, received True"),
        ("train.batch_size=-1", "train.batch_size must be an integer > 0, received -1"),
        ("train.learning_rate=0", "train.learning_rate must be a number > 0, received 0"),
        ("train.learning_rate=-0.1", "train.learning_rate must be a number > 0, received -0.1"),
        ("train.optimizer=adamw", "train.optimizer must be one of 'adam', 'sgd', 'rmsprop'"),
        ("train.max_examples=0", "train.max_examples must be an integer > 0, received 0"),
        ("data.val_fraction=0", "data.val_fraction must be a number strictly between 0 and 1"),
        ("data.val_fraction=1.5", "received 1.5"),
        ("data.timeout_s=0", "data.timeout_s must be a number > 0, received 0"),
        ("seed=-1", "seed must be an integer >= 0, received -1"),
        ("model.name=resnet", "model.name must be one of 'mlp', 'cnn' (model=NAME)"),
        (
            "+train.momentum=0.9",
            "unknown config key train.momentum (value 0.9); train allows only",
        ),
        ("+extra=1", "unknown config key extra (value 1)"),
        ("tracking.experiment_name=''", "tracking.experiment_name must be a non-empty value"),
        ("data.files.train_images.sha256=abc", "data.files.train_images.sha256 must be 64"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose([override]))
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=cnn model.dropout=1.0", "model.dropout must be a number in [0, 1), received 1.0"),
        ("model=cnn model.filters=[]", "model.filters must be a non-empty list of an integer > 0"),
        ("model=cnn model.filters=[8,-2]", "received [8, -2]"),
        (
            "model=cnn model.kernel_size=4",
            "model.kernel_size must be an odd integer from 1 to 7, received 4",
        ),
    ],
)
def test_bad_cnn_values(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose(override.split()))
    assert expected in str(err.value)


def test_unknown_group_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model=transformer"):
        compose(["model=transformer"])


def test_missing_key(default_params: dict) -> None:
    del default_params["train"]["epochs"]
    with pytest.raises(ConfigError, match="missing config key train.epochs"):
        validate(default_params)


def test_bad_params_yaml_stops_the_stage_before_any_work(
    tmp_path: Path, default_params: dict
) -> None:
    default_params["model"]["hidden_units"] = -3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params))
    for stage in ("fetch", "preprocess", "train", "evaluate"):
        proc = run_stage(stage, tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(
            "error: model.hidden_units must be an integer > 0, received -3"
        )
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_missing_params_yaml_says_where(tmp_path: Path) -> None:
    proc = run_stage("train", tmp_path, check=False)
    assert proc.returncode == 2
    assert "params.yaml not found" in proc.stderr and str(tmp_path) in proc.stderr


def test_config_command_check_detects_drift(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    proc = run(["python", "-m", "pipeline.config", "--check"], project)
    assert "matches conf/" in proc.stdout
    conf = project / "conf/train/default.yaml"
    conf.write_text(conf.read_text().replace("epochs: 5", "epochs: 7"))
    drifted = run(["python", "-m", "pipeline.config", "--check"], project, check=False)
    assert drifted.returncode == 2
    assert "params.yaml differs from conf/ composed" in drifted.stderr
    run(["python", "-m", "pipeline.config"], project)
    assert "epochs: 7" in (project / "params.yaml").read_text()
    assert "matches conf/" in run(["python", "-m", "pipeline.config", "--check"], project).stdout


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cluster_presets_reserve_the_cpus_their_jobs_compute_with(threads: int) -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.core.paths import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        reserved = {}
        for launcher in ("ray_cluster", "slurm"):
            cfg = hydra_compose(
                "config",
                overrides=[f"hydra/launcher={launcher}", f"train.intra_op_threads={threads}"],
                return_hydra_config=True,
            )
            node = cfg.hydra.launcher
            reserved[launcher] = (
                node.ray.remote.num_cpus if launcher == "ray_cluster" else node.cpus_per_task
            )
    assert reserved == {"ray_cluster": threads, "slurm": threads}


def test_a_run_records_params_yaml_to_the_letter() -> None:
    """What a run logs as config.yaml (and digests as params_sha256) is params.yaml itself."""
    assert (
        to_yaml(load_params(ROOT / "params.yaml").to_dict()) == (ROOT / "params.yaml").read_text()
    )
