"""`uv run python -m pipeline.stack up|status|env|down`: the team's stack on 127.0.0.1.

up      starts PostgreSQL (runs, registry, users), the S3 object store (SeaweedFS, bucket
        team-bucket) and `mlflow server --app-name basic-auth` storing artifacts in
        s3://team-bucket/mlflow; adds the DVC remote `stack` (s3://team-bucket/dvc) to this
        project's .dvc/config.local; prints the export lines a shell needs:
            eval "$(uv run python -m pipeline.stack up)"
        Every password and key is generated once and kept in DIR (mode 0600). On a folder that
        holds a stack, it starts what is not running, with the same data.
status  each service, its port and process, and whether it answers (exit 1 if one does not).
env     the export lines again.
down    stops every process the stack started; the data stays in DIR for the next `up`.

--ray-nodes N also starts a Ray cluster of N one-CPU nodes (`ray start --block`, the first the
head) and exports RAY_ADDRESS; status shows each node's id. `up --ray-nodes 0` leaves Ray out.
--ray-hosts N starts a Ray head here (no CPUs: it runs no job) and N one-CPU nodes each on a host
of its own: a network namespace on a bridge with a private /24, and a mount namespace in which
the project's and the stack's folders are empty but for the locked environment (read-only) and
the host's folder (DIR/hosts/hK). The services answer on the bridge's address too, which the
exports name. Needs root; `down` removes every namespace and link it made.
--slurm also starts a one-host SLURM cluster from Debian's slurm-wlm and munge (slurmctld, slurmd
with the machine's CPUs; munge key, state and logs in DIR/slurm) and exports SLURM_CONF.

Ports: the MLflow server on --port (5000), the object store's S3 gateway on the next, its own
servers on the four after (and 10,000 above), PostgreSQL on --port + 6. --port auto picks a free
run. --tls serves S3 and MLflow over https with a CA made in DIR/tls.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.core.errors import command_parser, run_cli
from pipeline.core.paths import project_root
from pipeline.stack.cluster import ray_node_ids
from pipeline.stack.team import REMOTE, Stack, free_port_base

DEFAULT_DIR = Path(".stack")


def add_dvc_remote(stack: Stack, project: Path) -> bool:
    """The remote `stack` in `project`'s .dvc/config.local (git-ignored), if it is a DVC repo."""
    if not (project / ".dvc").is_dir():
        return False
    from dvc.config import Config

    with Config(dvc_dir=str(project / ".dvc"), validate=False).edit("local") as config:
        config["remote"][REMOTE] = stack.dvc_remote()
    return True


def shell_lines(env: dict[str, str]) -> str:
    import shlex

    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


def main(argv: list[str]) -> None:
    parser = command_parser("stack", __doc__)
    parser.add_argument("action", choices=("up", "status", "env", "down"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the stack's folder")
    parser.add_argument("--port", help="the MLflow server's port (5000), or auto")
    parser.add_argument("--tls", action="store_true", default=None, help="https for S3, MLflow")
    parser.add_argument(
        "--ray-nodes", type=int, metavar="N", help="also a Ray cluster of N one-CPU nodes"
    )
    parser.add_argument(
        "--ray-hosts", type=int, metavar="N", help="also a Ray head and N hosts of their own"
    )
    parser.add_argument(
        "--slurm", action=argparse.BooleanOptionalAction, help="also a one-host SLURM cluster"
    )
    args = parser.parse_args(argv)
    folder = args.dir if args.dir.is_absolute() else project_root() / args.dir
    port = None
    if args.port == "auto":
        compute = {"ray_nodes": args.ray_nodes, "ray_hosts": args.ray_hosts, "slurm": args.slurm}
        port = None if (folder / "stack.json").is_file() else free_port_base(folder, **compute)
    elif args.port is not None:
        if not args.port.isdigit():
            parser.error(f"--port takes a number or auto, received {args.port!r}")
        port = int(args.port)
    if args.action != "up" and not (folder / "stack.json").is_file():
        parser.exit(1, f"error: there is no stack in {folder}: start one with `up`.\n")
    stack = Stack(
        folder,
        port=port,
        tls=args.tls,
        ray_nodes=args.ray_nodes,
        slurm=args.slurm,
        ray_hosts=args.ray_hosts,
    )
    if args.action == "up":
        started = time.monotonic()
        stack.up()
        for row in stack.status():
            print(f"{row['service']}: port {row['port']}, pid {row['pid']}", file=sys.stderr)
        if add_dvc_remote(stack, project_root()):
            print(f"DVC remote '{REMOTE}' in .dvc/config.local", file=sys.stderr)
        print(f"stack up in {time.monotonic() - started:.1f} s ({folder})", file=sys.stderr)
        print(shell_lines(stack.exports()))
    elif args.action == "env":
        print(shell_lines(stack.exports()))
    elif args.action == "status":
        rows = stack.status()
        ray_ids = ray_node_ids(stack.ray_address) if stack.ray and stack.ray[0].answers() else {}
        for row, service in zip(rows, stack.services, strict=True):
            answers = "answers" if row["answers"] else "does not answer"
            where = f"{row['address']}:{row['port']}"
            found = ray_ids.get(where) or ray_ids.get(f":{row['port']}", "-")
            node = f" node id {found}" if service in stack.ray else ""
            at = f" address {row['address']}" if row["address"] != "127.0.0.1" else ""
            print(
                f"{row['service']:<22} port {row['port']:<6} pid {row['pid']!s:<8} "
                f"{answers}{at}{node}"
            )
        if not all(row["answers"] for row in rows):
            sys.exit(1)
    else:
        stack.down()
        print(f"stack in {folder} stopped", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
