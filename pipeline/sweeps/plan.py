"""The plan of a sweep, made once before any job starts: which configurations train, and which
are taken as checkpoints of a longer training.

Nothing in the training path depends on the total epoch count (a constant learning rate, each
epoch's order the k-th draw of the seeded generator, compiled steps keyed without the count), so
the 3-epoch model of a configuration is, bit for bit, the weights of its 10-epoch training after
epoch 3. A sweep over `train.epochs` therefore trains each configuration (all other overrides
equal) once, for its largest epoch count, and tells that job the smaller counts
(`sweep.also_epochs`): the job makes each of their models, each its own run, from that one
training (pipeline/sweeps/job.py). `sweep.share_epochs=false`, or a key that makes an epoch depend
on the total count (`config.EPOCH_DEPENDENT`), trains every epoch count alone.

Plain data in, plain data out: a job's overrides are the strings Hydra's sweepers make.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.config import EPOCH_DEPENDENT

EPOCHS, ALSO, SHARE = "train.epochs=", "sweep.also_epochs=", "sweep.share_epochs="


def _epochs(job: Sequence[str]) -> int | None:
    found = [o.removeprefix(EPOCHS) for o in job if o.startswith(EPOCHS)]
    return int(found[-1]) if found and found[-1].isdigit() else None


def share_epochs(jobs: Sequence[Sequence[str]], share: bool) -> tuple[list[list[str]], str | None]:
    """The jobs to launch for `jobs` (each a job's overrides) and the line that says what was
    planned (None when the sweep does not vary train.epochs). With `share` (sweep.share_epochs),
    the jobs that differ only in train.epochs become one, of the largest count, which also makes
    the others' models (`sweep.also_epochs`)."""
    counts = {_epochs(job) for job in jobs}
    if len(counts) < 2 or None in counts:
        return [list(job) for job in jobs], None
    turned_off = [o for job in jobs for o in job if o == f"{SHARE}false"]
    dependent = sorted({o.split("=")[0] for job in jobs for o in job} & set(EPOCH_DEPENDENT))
    if not share or turned_off or dependent:
        why = (
            f"{', '.join(dependent)} makes an epoch depend on the count"
            if dependent
            else ("sweep.share_epochs=false")
        )
        return [list(job) for job in jobs], (
            f"sweep: each of the {len(jobs)} configurations trains alone ({why})."
        )
    groups: dict[tuple[str, ...], list[Sequence[str]]] = {}
    for job in jobs:
        rest = tuple(o for o in job if not o.startswith(EPOCHS))
        groups.setdefault(rest, []).append(job)
    planned = []
    for group in groups.values():
        longest = max(group, key=_epochs)  # its overrides in the sweep's order
        below = sorted({_epochs(job) for job in group} - {_epochs(longest)})
        also = [f"{ALSO}[{','.join(map(str, below))}]"] if below else []
        planned.append([*longest, *also])
    trained = sum(max(map(_epochs, group)) for group in groups.values())
    alone = sum(_epochs(job) for job in jobs)
    said = (
        f"sweep: {len(jobs)} configurations from {len(planned)} trainings ({trained} epochs, "
        f"not {alone}): each configuration trains once, for its largest epoch count, and its "
        "smaller counts' models are that training's checkpoints, each its own run "
        "(sweep.share_epochs=false trains each alone)."
    )
    return planned, said


def own_overrides(overrides: str, epochs: int | None = None) -> str:
    """A job's overrides as a run of one configuration records them: without the plan's
    `sweep.also_epochs`, and with `epochs` for a checkpoint's run."""
    kept = [o for o in overrides.split() if not o.startswith(ALSO)]
    if epochs is not None:
        kept = [f"{EPOCHS}{epochs}" if o.startswith(EPOCHS) else o for o in kept]
    return " ".join(kept)
