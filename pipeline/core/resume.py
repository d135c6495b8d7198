"""A training that stops resumes where it stopped.

At the end of every epoch the train stage writes the whole state of its training to
models/resume/ (beside its outputs, not one of them: DVC would remove it before running the
stage): every variable of the model (weights and the random-seed state of its dropout layers)
and of its optimizer, NumPy's global generator (each epoch's data order is its next draw), the
epoch and the history so far. The arrays go to `state-<epoch>.npz`, then `checkpoint.json`
(epoch, history, the file's SHA-256 and size, and the key below) replaces the last one
atomically: a training killed at any moment leaves the last complete checkpoint.

A checkpoint is used only for the training it was made by: its key is the digest of the code
(the stage's Python files and uv.lock), of the configuration (all of it but `train.epochs`,
which no epoch depends on, and `tracking`) and of the prepared data; a checkpoint whose key
differs, or whose file does not match its digest, size or the model's shapes, is refused by name
and training starts over. The arrays are read with `allow_pickle=False`: a checkpoint cannot run
code. The stage removes the folder once its model is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.data import sha256_file

RESUME_DIR = Path("models/resume")
CHECKPOINT = "checkpoint.json"
MAX_JSON = 16 << 20  # bytes: a checkpoint.json larger than this is not one of ours
CODE = ("pipeline/core", "pipeline/tracking", "pipeline/stages/train.py", "uv.lock")


def code_digest(root: Path) -> str:
    """SHA-256 over the training's code: the Python files under CODE and uv.lock."""
    digest = hashlib.sha256()
    for place in CODE:
        path = root / place
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(str(file.relative_to(root)).encode() + b"\0")
                digest.update(file.read_bytes())
    return digest.hexdigest()


def config_digest(cfg: dict[str, Any]) -> str:
    """SHA-256 of a config (as a dict) without `train.epochs` and `tracking`."""
    kept = {k: v for k, v in cfg.items() if k != "tracking"}
    kept["train"] = {k: v for k, v in kept.get("train", {}).items() if k != "epochs"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Resumed:
    """A checkpoint read back: the epochs done, their history and the run that made them."""

    epoch: int
    history: dict[str, list[float]]
    run_id: str | None


class Checkpoints:
    """The checkpoints of one training in `folder`, keyed by `key` (code, config, data
    digests), made in run `run_id`."""

    def __init__(self, folder: Path, key: dict[str, str], run_id: str | None = None) -> None:
        self.folder = folder
        self.key = key
        self.run_id = run_id
        self.resumed: Resumed | None = None  # what `restore` put back, once a training began

    @staticmethod
    def _state(model: Any) -> list[Any]:
        return [*model.variables, *model.optimizer.variables]

    def save(self, epoch: int, model: Any, history: dict[str, list[float]]) -> str:
        """Write the training's state after `epoch` epochs (counted from 1); return the name
        of its arrays' file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"state-{epoch:05d}.npz"
        part = self.folder / f".{name}.part"
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        arrays = {f"v{i}": np.asarray(v) for i, v in enumerate(self._state(model))}
        with part.open("wb") as out:
            np.savez(out, **arrays, rng_keys=keys, rng_rest=np.array([pos, has_gauss, cached]))
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, self.folder / name)
        meta = {
            "epoch": epoch,
            "history": history,
            "file": name,
            "sha256": sha256_file(self.folder / name),
            "size": (self.folder / name).stat().st_size,
            "variables": len(arrays),
            "rng": kind,
            "run_id": self.run_id,
            "key": self.key,
        }
        part = self.folder / f".{CHECKPOINT}.part"
        part.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(part, self.folder / CHECKPOINT)
        for old in self.folder.glob("state-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return name

    def refusal(self) -> str | None:
        """Why the checkpoint in the folder cannot resume this training (None: it can, or
        there is none)."""
        try:
            meta = self._meta()
        except FileNotFoundError:
            return None
        except ValueError as exc:
            return str(exc)
        for part, value in self.key.items():
            theirs = meta["key"].get(part)
            if theirs != value:
                return (
                    f"it was made with other {part} ({str(theirs)[:12]}, this training's is "
                    f"{value[:12]})"
                )
        file = self.folder / meta["file"]
        if not file.is_file() or file.stat().st_size != meta["size"]:
            return f"its state file {meta['file']} is missing or not {meta['size']} bytes"
        if sha256_file(file) != meta["sha256"]:
            return f"its state file {meta['file']} does not match its SHA-256"
        return None

    def _meta(self) -> dict[str, Any]:
        path = self.folder / CHECKPOINT
        if path.stat().st_size > MAX_JSON:
            raise ValueError(f"{CHECKPOINT} is {path.stat().st_size} bytes, not a checkpoint")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            epoch, name = int(meta["epoch"]), str(meta["file"])
            if not isinstance(meta["key"], dict) or not isinstance(meta["history"], dict):
                raise TypeError("key and history must be objects")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"its {CHECKPOINT} cannot be read ({exc})") from exc
        if epoch < 1 or "/" in name or not name.startswith("state-"):
            raise ValueError(f"its {CHECKPOINT} names epoch {epoch} and file {name!r}")
        return meta

    def restore(self, model: Any, epochs: int) -> Resumed | None:
        """Put the checkpoint's state into `model` (compiled, its optimizer built) and NumPy's
        generator; None when there is none to use: none, refused (said on stderr) or not
        before `epochs`."""
        import sys

        if not (self.folder / CHECKPOINT).exists():
            return None
        why = self.refusal()
        if why is None:
            meta = self._meta()
            if meta["epoch"] >= epochs:
                why = f"it is at epoch {meta['epoch']}, and this training ends at {epochs}"
        if why is None:
            with np.load(self.folder / meta["file"], allow_pickle=False) as saved:
                state = self._state(model)
                arrays = [saved[f"v{i}"] for i in range(meta["variables"])]
                if len(arrays) != len(state) or any(
                    tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, state, strict=True)
                ):
                    why = "its arrays do not have the model's shapes"
                else:
                    for variable, array in zip(state, arrays, strict=True):
                        variable.assign(array)
                    rest = saved["rng_rest"]
                    np.random.set_state(
                        (meta["rng"], saved["rng_keys"], int(rest[0]), int(rest[1]), rest[2])
                    )
        if why is not None:
            print(
                f"train: the checkpoint in {self.folder} is not used: {why}; training starts "
                "over.",
                file=sys.stderr,
            )
            self.clear()
            return None
        history = {k: [float(x) for x in v] for k, v in meta["history"].items()}
        return Resumed(int(meta["epoch"]), history, meta.get("run_id"))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
