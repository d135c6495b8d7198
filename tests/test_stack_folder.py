"""The stack's folder, settings, secrets and certificates, without starting a service: what
`pipeline.stack` refuses, in one line, before it starts anything."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from helpers import ROOT, run_env
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


def test_a_port_in_use_is_found_and_auto_avoids_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert port_in_use(taken.getsockname()[1])
    base = free_port_base(tmp_path / "new")
    stack = Stack(tmp_path / "new", port=base)
    assert not any(port_in_use(p) for s in stack.services for p in s.ports())


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
