"""The stack's folder, settings, secrets and certificates, without starting a service: what
`pipeline.stack` refuses, in one line, before it starts anything."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from helpers import ROOT, run_env, unavailable
from pipeline.stack.hosts import check_can_make_hosts
from pipeline.stack.processes import StackError, port_in_use
from pipeline.stack.services import postgres_program
from pipeline.stack.team import FORMAT, Stack, free_port_base
from pipeline.stack.tls import make_certificates


def stack_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.stack", *args],
        cwd=cwd,
        env=run_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
    )


def test_a_folder_of_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StackError, match="holds no stack.json: it is not a stack's folder"):
        Stack(tmp_path)


def test_a_stack_of_another_format_is_refused_naming_its_file(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(json.dumps({"format": FORMAT + 1, "port": 5000}))
    with pytest.raises(StackError, match=rf"stack.json is of stack format {FORMAT + 1}"):
        Stack(tmp_path)
    up = stack_cli("up", "--dir", str(tmp_path), cwd=tmp_path)
    assert up.returncode == 1 and up.stderr.count("\n") == 1, up.stderr
    assert up.stderr.startswith("error: ") and "Traceback" not in up.stderr


def test_settings_of_a_saved_stack_win_and_a_different_one_is_refused(tmp_path: Path) -> None:
    saved = {"format": FORMAT, "port": 6000, "tls": True, "bucket": "team-bucket"}
    (tmp_path / "stack.json").write_text(json.dumps(saved))
    stack = Stack(tmp_path)
    assert (stack.port, stack.tls, stack.mlflow_url) == (6000, True, "https://127.0.0.1:6000")
    assert stack.ports == {"mlflow": 6000, "s3": 6001, "postgres": 6006}
    with pytest.raises(StackError, match="holds a stack with port=6000, tls=True, not port=7000"):
        Stack(tmp_path, port=7000)


@pytest.mark.parametrize("port", [80, 60000])
def test_a_port_out_of_range_is_refused(tmp_path: Path, port: int) -> None:
    with pytest.raises(StackError, match=rf"--port must be between 1024 and \d+, received {port}"):
        Stack(tmp_path / "new", port=port)


def test_auto_passes_over_a_run_of_ports_one_of_which_is_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--port auto` tries runs of ports at random; one whose MLflow port is taken (held open
    while it chooses) is passed over for the next."""
    folder = tmp_path / "new"

    def ports(base: int) -> set[int]:
        return {p for s in Stack(folder, port=base).services for p in s.ports()}

    first = free_port_base(folder)
    second = next(
        b for b in iter(lambda: free_port_base(folder), None) if not ports(b) & ports(first)
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        assert port_in_use(first)
        candidates = iter([first, second])
        monkeypatch.setattr(random, "randrange", lambda *_: next(candidates))
        assert free_port_base(folder) == second


def test_a_missing_program_names_the_debian_package() -> None:
    with pytest.raises(StackError, match=r"install Debian's postgresql package"):
        postgres_program("no-such-postgres-program")


def test_commands_other_than_up_need_a_stack(tmp_path: Path) -> None:
    for action in ("status", "env", "down"):
        said = stack_cli(action, "--dir", str(tmp_path / "none"), cwd=tmp_path)
        assert said.returncode == 1 and "there is no stack in" in said.stderr, said.stderr
    bad = stack_cli("up", "--port", "high", "--dir", str(tmp_path / "none"), cwd=tmp_path)
    assert bad.returncode == 2 and "--port takes a number or auto, received 'high'" in bad.stderr
    assert not (tmp_path / "none").exists()


def test_certificates_chain_to_the_ca_and_keys_are_private(tmp_path: Path) -> None:
    make_certificates(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in ("ca-key.pem", "server-key.pem"):
        assert (tmp_path / key).stat().st_mode & 0o077 == 0
    before = (tmp_path / "server.pem").read_bytes()
    make_certificates(tmp_path)  # kept: clients that trust the CA go on trusting it
    assert (tmp_path / "server.pem").read_bytes() == before


def test_hosts_on_a_machine_that_cannot_make_namespaces_are_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    """`up --ray-hosts` without the capabilities namespaces need (root's, here dropped with
    util-linux's setpriv) says so in one line and makes nothing: no folder, no process."""
    folder = tmp_path / "stack"
    command = [sys.executable, "-m", "pipeline.stack", "up", "--ray-hosts", "2",
               "--dir", str(folder), "--port", "auto"]  # fmt: skip
    if os.geteuid() == 0:
        check_can_make_hosts()  # root can: the refusal below is the dropped capabilities'
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            unavailable("util-linux's setpriv is missing")
        drop = "-net_admin,-sys_admin"
        command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    refused = subprocess.run(
        command, cwd=ROOT, env=run_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert re.fullmatch(
        r"error: --ray-hosts makes network namespaces, links and mounts, which needs root with "
        r"CAP_NET_ADMIN and CAP_SYS_ADMIN, and this process lacks CAP_NET_ADMIN and "
        r"CAP_SYS_ADMIN: .*--ray-nodes N.*\n",
        refused.stderr,
    ), refused.stderr
    assert not folder.exists()
