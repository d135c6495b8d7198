"""The tree shows the architecture: no import cycle, packages in the order the docs give, names
import nothing, light modules stay light, dvc.yaml's deps follow the code each stage runs, and
every command answers --help without doing any work."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, copy_project, run, run_env

PIPELINE = ROOT / "pipeline"
COMMANDS = (
    "fetch", "preprocess", "train", "evaluate", "sweep", "compare", "runs", "predict",
    "reproduce", "app", "config", "stack",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PIPELINE.rglob("*.py")}


def imports(path: Path, annotations: bool = True) -> set[str]:
    """The pipeline modules `path` imports, at the top or inside functions; with
    `annotations=False`, not those imported only for type annotations (`if TYPE_CHECKING:`),
    which never run."""
    found = set()
    known = modules()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if not annotations:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return found


def package(module: str) -> str:
    """The package `module` belongs to: `pipeline.core` for pipeline.core.data, `pipeline` for
    the one-line commands (pipeline/train.py)."""
    parts = module.split(".")
    if len(parts) > 1 and (PIPELINE / parts[1]).is_dir():
        return ".".join(parts[:2])
    return "pipeline"


def import_graph(of: Callable[[str], str], annotations: bool = True) -> dict[str, dict[str, str]]:
    """Who imports whom (`imports`), grouped by `of` (a module's package, or the module itself):
    for each edge, one module import that makes it, to name in a failure."""
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules().items():
        for target in imports(path, annotations):
            if of(name) != of(target):
                graph.setdefault(of(name), {}).setdefault(of(target), f"{name} imports {target}")
    return graph


def cycle(graph: dict[str, dict[str, str]]) -> list[str]:
    """The imports of one cycle in `graph`, or [] when it has none."""
    state: dict[str, str] = {}  # node -> "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for target, why in graph.get(node, {}).items():
            if state.get(target) == "open":
                start = next(i for i, (n, _) in enumerate(path) if n == target)
                return [w for _, w in path[start + 1 :]] + [why]
            if target not in state and (found := visit(target, [*path, (target, why)])):
                return found
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node, [(node, "")])):
            return [w for w in found if w]
    return []


def test_no_import_cycle_between_packages() -> None:
    assert not cycle(import_graph(package))


def test_no_import_cycle_between_modules() -> None:
    """Also imports inside functions: a cycle there is one a reader has to untangle too. Type
    annotations aside: the stack's services name the `Stack` they belong to."""
    assert not cycle(import_graph(lambda module: module, annotations=False))


def test_the_package_order_the_docs_give_is_the_import_order() -> None:
    """pipeline/__init__.py lists the packages lowest first: each imports only from those
    listed before it."""
    doc = ast.get_docstring(ast.parse((PIPELINE / "__init__.py").read_text(encoding="utf-8")))
    listed = [f"pipeline.{m}" for m in re.findall(r"^- `(\w+)`", doc, flags=re.MULTILINE)]
    packages = {package(m) for m in modules()} - {"pipeline"}
    assert set(listed) == packages
    order = {p: i for i, p in enumerate([*listed, "pipeline"])}
    climbs = [
        why
        for source, targets in import_graph(package).items()
        for target, why in targets.items()
        if order[target] >= order[source]
    ]
    assert not climbs


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"b": "a imports b"}, "b": {"c": "b imports c"}, "c": {"a": "c imports a"}}
    assert cycle(graph) == ["a imports b", "b imports c", "c imports a"]
    assert cycle({"a": {"b": "a imports b"}, "b": {}}) == []


def test_names_import_nothing() -> None:
    tree = ast.parse((PIPELINE / "core" / "names.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def test_every_package_says_what_it_holds() -> None:
    for init in PIPELINE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), init


def loaded_after(code: str) -> set[str]:
    """Which of TensorFlow, MLflow, matplotlib and Hydra a fresh interpreter has loaded after
    running `code`."""
    probe = (
        f"{code}\nimport sys\n"
        "print(' '.join(m for m in ('tensorflow', 'mlflow', 'matplotlib', 'hydra') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=run_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_statistics_metrics_and_names_load_neither_mlflow_nor_tensorflow() -> None:
    code = (
        "import pipeline.core.names, pipeline.sweeps.stats, pipeline.sweeps.summary, "
        "pipeline.core.metrics, pipeline.core.config, pipeline.core.data"
    )
    assert loaded_after(code) == set()


def test_fetch_and_preprocess_do_not_load_tensorflow() -> None:
    assert "tensorflow" not in loaded_after(
        "import pipeline.stages.fetch, pipeline.stages.preprocess"
    )


def test_keras_loads_without_scikit_learn_and_matplotlib_which_still_import_after() -> None:
    assert loaded_after(
        "from pipeline.core.console import load_keras\nload_keras()\n"
        "assert 'sklearn' not in __import__('sys').modules"
    ) == {"tensorflow"}
    assert loaded_after(
        "from pipeline.core.console import load_keras\nload_keras()\n"
        "import sklearn\nfrom pipeline.core import plots\nplots.figure_data"
    ) == {"tensorflow", "matplotlib"}


def closure(module: str) -> set[str]:
    """`module` and every pipeline module it imports, directly or not."""
    known, seen, todo = modules(), set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.add(name)
        todo.extend(imports(known[name]))
    return seen


def test_dvc_yaml_deps_cover_the_code_each_stage_runs() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    known = modules()
    for stage, spec in stages.items():
        spec = spec.get("do", spec)  # fetch: one stage for what it reads (foreach)
        deps = [d for d in spec["deps"] if d.startswith("pipeline")]
        for module in closure(f"pipeline.stages.{stage}") | {f"pipeline.{stage}"}:
            path = known[module].relative_to(ROOT).as_posix()
            if path.endswith("__init__.py"):
                continue
            assert any(path == d or path.startswith(f"{d}/") for d in deps), (stage, path)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help_without_doing_work(command: str, tmp_path: Path) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['pipeline/{command}.py', '--help']\n"
        "try:\n"
        f"    runpy.run_module('pipeline.{command}', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "import sys\nprint('loaded:', 'tensorflow' in sys.modules, "
            "'mlflow' in sys.modules)",
        ],
        cwd=tmp_path,
        env=run_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"uv run python -m pipeline.{command}" in proc.stdout.splitlines()[0]
    assert "loaded: False False" in proc.stdout  # no training, no store
    assert list(tmp_path.iterdir()) == []  # no file touched


def test_a_sweep_without_m_says_how_or_runs_as_a_sweep(tmp_path: Path) -> None:
    """`pipeline.sweep` without -m runs the overrides as a sweep; `--cfg job` only prints."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.sweep", "model.hidden_units=64", "--cfg", "job"],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hidden_units: 64" in proc.stdout and "Traceback" not in proc.stderr


def test_dvc_lock_matches_the_code_and_the_committed_metrics(tmp_path: Path) -> None:
    """What dvc.lock records of each stage's code, params and uv.lock, and of the metrics and
    plot data committed beside it, is what the tree holds: a fresh clone's `dvc status` finds
    nothing to rerun but the data it has not pulled yet."""
    project = copy_project(tmp_path / "project")
    proc = run([sys.executable, "-m", "dvc", "status", "--json"], project)
    stale = []
    for stage, changes in json.loads(proc.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):  # "changed command" and the like
                stale.append(f"{stage}: {change}")
                continue
            for kind, entries in change.items():
                for path, state in entries.items():
                    fetched = path.startswith(("data/", "models/", "reports/figures"))
                    if not (fetched and state in ("deleted", "not in cache")):
                        stale.append(f"{stage}: {kind} {path} {state}")
    assert not stale, (
        "dvc.lock does not match the tree; run `uv run dvc repro` (or `uv run dvc commit` when "
        "only code that cannot change the results moved) and commit dvc.lock and reports/: "
        + "; ".join(stale)
    )


def test_every_imported_package_is_a_declared_dependency() -> None:
    import tomllib
    from importlib.metadata import packages_distributions

    declared = {
        re.split(r"[<>=!\[;]", dep, maxsplit=1)[0].strip().lower().replace("_", "-")
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    stdlib = set(sys.stdlib_module_names)
    owners = packages_distributions()
    missing = set()
    for path in PIPELINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in stdlib or top in ("pipeline", "__future__"):
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not dists & declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not in pyproject.toml's dependencies: {sorted(missing)}"


@pytest.mark.parametrize(
    "script", ["benchmarks/run.py", "benchmarks/pictures.py", "docs/make_images.py"]
)
def test_the_benchmark_and_the_image_maker_start(script: str) -> None:
    proc = run([sys.executable, script, "--help"], ROOT)
    summary = (ROOT / script).read_text().split('"""')[1].strip().splitlines()[0]
    assert proc.stdout.startswith(f"usage: {Path(script).name}"), proc.stdout
    assert summary in " ".join(proc.stdout.split()), proc.stdout  # its own docstring's summary
