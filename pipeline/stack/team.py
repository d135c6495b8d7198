"""A team stack in one folder: its settings, its secrets, its services, and what clients need.

The folder holds `stack.json` (format version, ports, TLS, bucket: no secret), `secrets.json`
(every password and key, generated at the first `up`, mode 0600), the services' data, logs and
pid files, and with TLS the certificates. `up` on a folder that holds a stack starts what is not
running, with the same data and secrets.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from pipeline.stack.cluster import Munge, RayNode, SlurmDaemon, ray_environment
from pipeline.stack.hosts import Forwarder, Network, RayHost, check_can_make_hosts
from pipeline.stack.processes import StackError, port_in_use
from pipeline.stack.services import MlflowServer, ObjectStore, Postgres, Service
from pipeline.stack.tls import make_certificates

FORMAT = 1  # of stack.json: a folder written by another format is refused, not guessed at
DEFAULT_PORT = 5000
BUCKET = "team-bucket"
REMOTE = "stack"  # the DVC remote `up` adds to the project's .dvc/config.local
SECRETS = (
    "postgres_password", "s3_access_key", "s3_secret_key", "admin_password", "team_password",
    "flask_secret",
)  # fmt: skip
# Where each service listens, counted from the stack's port.
OFFSETS = {"mlflow": 0, "s3": 1, "postgres": 6}
HIGHEST_PORT = 65535 - 10000 - 6  # the object store's gRPC ports are 10,000 above its own


class Stack:
    """The stack kept in `folder`. `port` is the MLflow server's; the object store's S3 port
    is the next, its other servers the four after, PostgreSQL's the one after those."""

    USER = "team"  # the MLflow user the exports name; `admin` only manages users

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        tls: bool | None = None,
        ray_nodes: int | None = None,
        slurm: bool | None = None,
        ray_hosts: int | None = None,
    ) -> None:
        self.folder = folder.resolve()
        self.settings_file = self.folder / "stack.json"
        saved = self._saved()
        if saved:
            # Compute is added or taken away at any `up`; the port and TLS are the stack's own.
            if ray_nodes is None and ray_hosts is None:
                ray_nodes, ray_hosts = saved.get("ray_nodes", 0), saved.get("ray_hosts", 0)
            slurm = saved.get("slurm", False) if slurm is None else slurm
            given = {"port": port, "tls": tls}
            differ = [f"{k}={v}" for k, v in given.items() if v is not None and v != saved[k]]
            if differ:
                raise StackError(
                    f"{self.folder} holds a stack with port={saved['port']}, "
                    f"tls={saved['tls']}, not {', '.join(differ)}: run `down` and use another "
                    "--dir, or leave those options out."
                )
            port, tls = saved["port"], saved["tls"]
        self.port = DEFAULT_PORT if port is None else port
        self.tls = bool(tls)
        self.bucket = BUCKET
        if not 1024 <= self.port <= HIGHEST_PORT:
            raise StackError(
                f"--port must be between 1024 and {HIGHEST_PORT}, received {self.port}."
            )
        self.ports = {name: self.port + offset for name, offset in OFFSETS.items()}
        self.postgres, self.object_store = Postgres(self), ObjectStore(self)
        self.server = MlflowServer(self)
        self.ray_nodes, self.ray_hosts = ray_nodes or 0, ray_hosts or 0
        if self.ray_nodes < 0 or self.ray_hosts < 0:
            raise StackError(
                f"--ray-nodes and --ray-hosts must be 0 or more, received {self.ray_nodes} and "
                f"{self.ray_hosts}."
            )
        if self.ray_nodes and self.ray_hosts:
            raise StackError(
                f"--ray-nodes {self.ray_nodes} and --ray-hosts {self.ray_hosts}: choose one (Ray "
                "nodes on this machine's 127.0.0.1, or a head here and hosts of their own)."
            )
        if self.ray_hosts and self.tls:
            raise StackError(
                "--ray-hosts with --tls: the certificates name 127.0.0.1 only; start the hosts' "
                "stack without --tls (its network is the stack's own)."
            )
        self.network = Network(self) if self.ray_hosts else None
        self.forwarder = [Forwarder(self)] if self.ray_hosts else []
        self.ray: list[RayNode] = (
            [RayNode(self, 0), *(RayHost(self, i) for i in range(1, self.ray_hosts + 1))]
            if self.ray_hosts
            else [RayNode(self, i) for i in range(self.ray_nodes)]
        )
        self.slurm = bool(slurm)
        self.slurm_services: list[Service] = (
            [Munge(self), SlurmDaemon(self, "slurmctld"), SlurmDaemon(self, "slurmd")]
            if self.slurm
            else []
        )
        self.services: list[Service] = [
            self.postgres, self.object_store, self.server, *self.forwarder, *self.ray,
            *self.slurm_services,
        ]  # fmt: skip
        self._secrets: dict[str, str] | None = None

    def _saved(self) -> dict | None:
        if not self.settings_file.is_file():
            if self.folder.is_dir() and any(self.folder.iterdir()):
                raise StackError(
                    f"{self.folder} is not empty and holds no stack.json: it is not a stack's "
                    "folder. Choose an empty or new folder with --dir."
                )
            return None
        try:
            saved = json.loads(self.settings_file.read_text())
            version = saved["format"]
        except (OSError, ValueError, KeyError, TypeError):
            version = None
        if version != FORMAT:
            raise StackError(
                f"{self.settings_file} is of stack format {version}, this version reads "
                f"format {FORMAT}: run `down` with the version that made it, and use a new --dir."
            )
        return saved

    # -- where clients find it ------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def mlflow_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['mlflow']}"

    @property
    def s3_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['s3']}"

    @property
    def public_address(self) -> str:
        """Where clients find the services: 127.0.0.1, or with hosts the bridge's address,
        which this machine and every host reach."""
        return self.network.address if self.network else "127.0.0.1"

    def public_url(self, service: str) -> str:
        return f"{self.scheme}://{self.public_address}:{self.ports[service]}"

    def host_dir(self, index: int) -> Path:
        """Host `index`'s own folder: all it keeps (its home and caches)."""
        return self.folder / "hosts" / f"h{index}"

    @property
    def tls_dir(self) -> Path:
        return self.folder / "tls"

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def ray_address(self) -> str:
        return f"{self.public_address}:{self.ray[0].gcs_port}"

    @property
    def ray_dir(self) -> Path:
        """Ray's session folder: short, as its socket paths must fit in 107 bytes."""
        inside = self.folder / "ray"
        if len(str(inside)) <= 40:
            return inside
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"ray-stack-{digest}"

    @property
    def slurm_dir(self) -> Path:
        return self.folder / "slurm"

    @property
    def secrets(self) -> dict[str, str]:
        if self._secrets is None:
            self._secrets = json.loads((self.folder / "secrets.json").read_text())
        return self._secrets

    def exports(self) -> dict[str, str]:
        """What a client's shell needs: the server, the stack's user, the CA with TLS."""
        env = {
            "MLFLOW_TRACKING_URI": self.public_url("mlflow"),
            "MLFLOW_TRACKING_USERNAME": self.USER,
            "MLFLOW_TRACKING_PASSWORD": self.secrets["team_password"],
        }
        if self.tls:
            env.update(MLFLOW_TRACKING_SERVER_CERT_PATH=str(self.ca), AWS_CA_BUNDLE=str(self.ca))
        if self.ray:
            env.update(RAY_ADDRESS=self.ray_address, **ray_environment())
        if self.slurm:
            env["SLURM_CONF"] = str(self.slurm_dir / "slurm.conf")
        return env

    def dvc_remote(self) -> dict[str, str]:
        """The DVC remote `stack`: a folder of the same bucket, with the stack's keys."""
        remote = {
            "url": f"s3://{self.bucket}/dvc",
            "endpointurl": self.public_url("s3"),
            "access_key_id": self.secrets["s3_access_key"],
            "secret_access_key": self.secrets["s3_secret_key"],
        }
        if self.tls:
            remote["ssl_verify"] = str(self.ca)
        return remote

    def storage_keys(self) -> dict[str, str]:
        """The object store's keys as S3 clients read them (a node's DVC pulls with them)."""
        return {
            "AWS_ACCESS_KEY_ID": self.secrets["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": self.secrets["s3_secret_key"],
        }

    # -- up, status, down ---------------------------------------------------------------
    def _prepare(self) -> None:
        """The folder, its settings and secrets, made once; kept as they are afterwards."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.slurm:
            self.slurm_dir.mkdir(mode=0o700, exist_ok=True)
        self.folder.chmod(0o711)  # PostgreSQL's user must pass through to its data
        (self.folder / "run").mkdir(mode=0o700, exist_ok=True)
        (self.folder / "logs").mkdir(exist_ok=True)
        (self.folder / "logs").chmod(0o711)  # PostgreSQL's user writes its own log there
        secrets_file = self.folder / "secrets.json"
        if not secrets_file.is_file():
            made = {name: secrets.token_urlsafe(24) for name in SECRETS}
            made["s3_access_key"] = "STACK" + secrets.token_hex(8).upper()
            secrets_file.touch(mode=0o600)
            secrets_file.write_text(json.dumps(made, indent=1))
        if self.tls:
            make_certificates(self.tls_dir)
        settings = {
            "format": FORMAT, "port": self.port, "tls": self.tls, "bucket": self.bucket,
            "ray_nodes": self.ray_nodes, "ray_hosts": self.ray_hosts, "slurm": self.slurm,
        }  # fmt: skip
        self.settings_file.write_text(json.dumps(settings, indent=1) + "\n")

    def up(self) -> None:
        """Start every service that does not answer, in an order that lets each find the ones
        it needs; return once all answer."""
        starting = [s for s in self.services if not (s.pid() and s.answers())]
        if self.ray_hosts and starting:
            check_can_make_hosts()
        busy = [(port, s.label) for s in starting for port in s.ports() if port_in_use(port)]
        if busy:
            port, label = busy[0]
            raise StackError(
                f"port {port} on 127.0.0.1, which {label} needs, is in use: stop what listens "
                "there, or choose other ports with --port (or --port auto)."
            )
        self._prepare()
        # The object store starts in the background while PostgreSQL, the Ray head, munge and
        # SLURM's controller start and are waited for; then the services that need them start
        # (the MLflow server, the other Ray nodes, slurmd); then all are waited for.
        first = [s for s in starting if isinstance(s, ObjectStore)]
        waited_for = [self.postgres, *self.forwarder, *self.ray[:1], *self.slurm_services[:2]]
        needed = [s for s in starting if s in waited_for]
        order = first + needed + [s for s in starting if s not in first + needed]
        try:
            for service in order:
                service.start()
                if service in needed:
                    service.wait()
            for service in order:
                if service not in needed:
                    service.wait()
        except BaseException:
            for service in reversed(order):  # a stack half up is no stack: stop what started
                service.stop()
            raise

    def status(self) -> list[dict]:
        return [
            {
                "service": s.label,
                "port": s.port,
                "pid": s.pid(),
                "answers": s.answers(),
                "address": getattr(s, "address", "127.0.0.1"),
            }  # fmt: skip
            for s in self.services
        ]

    def down(self) -> None:
        """Stop every service, the server first: nothing of the stack is left running."""
        for service in reversed(self.services):
            service.stop()


def free_port_base(folder: Path, **compute: int | bool | None) -> int:
    """A stack port at which every port the stack needs is free (for `--port auto`), chosen
    below the kernel's ephemeral range (its gRPC ports, 10,000 up, included): a port in that
    range may be taken at any moment as the local end of some outgoing connection."""
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    highest = min(HIGHEST_PORT, low - 10000 - 400)  # Ray's worker ports reach 399 above
    for _ in range(200):
        base = random.randrange(10000, highest)
        stack = Stack(folder, port=base, **compute)  # compute: ray_nodes, slurm
        if not any(port_in_use(port) for s in stack.services for port in s.ports()):
            return base
    raise StackError(f"found no free run of ports for the stack between 10000 and {highest}.")
