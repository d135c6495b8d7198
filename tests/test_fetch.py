import gzip
from pathlib import Path

import pytest
import yaml

from helpers import NAMES, ROOT, gzip_folder, run, spec_of
from pipeline.core.data import sha256_file
from pipeline.core.download import fetch_file, sources
from pipeline.core.errors import DataError


@pytest.fixture
def gz_mirror(small_mnist: Path, tmp_path: Path) -> Path:
    return gzip_folder(small_mnist, tmp_path / "gz-mirror")


@pytest.fixture
def http_mirror(gz_mirror: Path, serve) -> str:
    return serve(gz_mirror, prefix="/mnist")


def test_sources_put_the_environment_mirror_first() -> None:
    assert sources(["https://a/", "https://b/"], "/local") == [
        "/local",
        "https://a/",
        "https://b/",
    ]
    assert sources(["https://a/"], None) == ["https://a/"]


def test_fetch_from_gzip_folder(small_mnist: Path, gz_mirror: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    spec = spec_of(small_mnist / NAMES[0])
    assert fetch_file(spec, raw, [str(gz_mirror)], timeout=5) == str(gz_mirror)
    assert (raw / spec.name).read_bytes() == (small_mnist / spec.name).read_bytes()
    assert sorted(p.name for p in raw.iterdir()) == [spec.name]


def test_fetch_from_plain_folder(small_mnist: Path, tmp_path: Path) -> None:
    spec = spec_of(small_mnist / NAMES[1])
    assert fetch_file(spec, tmp_path, [str(small_mnist)], timeout=5) == str(small_mnist)
    assert sha256_file(tmp_path / spec.name) == spec.sha256


def test_fetch_over_http(small_mnist: Path, http_mirror: str, tmp_path: Path) -> None:
    spec = spec_of(small_mnist / NAMES[2])
    assert fetch_file(spec, tmp_path, [http_mirror], timeout=5) == http_mirror
    assert sha256_file(tmp_path / spec.name) == spec.sha256


def test_wrong_bytes_fall_through_to_next_source(
    small_mnist: Path, gz_mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    spec = spec_of(small_mnist / NAMES[0])
    wrong = bytearray((small_mnist / spec.name).read_bytes())
    wrong[-1] ^= 0xFF
    (bad / spec.name).write_bytes(bytes(wrong))
    raw = tmp_path / "raw"
    raw.mkdir()
    assert fetch_file(spec, raw, [str(bad), str(gz_mirror)], timeout=5) == str(gz_mirror)
    assert f"from {bad} failed (SHA-256" in capsys.readouterr().err


def test_every_source_failing_lists_them_and_leaves_nothing(
    small_mnist: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    spec = spec_of(small_mnist / NAMES[0])
    (truncated / f"{spec.name}.gz").write_bytes(
        gzip.compress((small_mnist / spec.name).read_bytes())[:200]
    )
    raw = tmp_path / "raw"
    raw.mkdir()
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        fetch_file(spec, raw, [str(truncated), missing], timeout=5)
    message = str(err.value)
    assert f"could not fetch {spec.name} from any source" in message
    assert f"  {truncated}: " in message and f"  {missing}: no {spec.name}.gz" in message
    assert "export DATA_MIRROR=" in message
    assert list(raw.iterdir()) == []


def test_verified_file_is_kept_and_corrupt_one_replaced(
    small_mnist: Path, gz_mirror: Path, tmp_path: Path
) -> None:
    spec = spec_of(small_mnist / NAMES[3])
    fetch_file(spec, tmp_path, [str(gz_mirror)], timeout=5)
    assert fetch_file(spec, tmp_path, [], timeout=5) == "present"
    (tmp_path / spec.name).write_bytes(b"\x00\x00\x08\x01garbage")
    assert fetch_file(spec, tmp_path, [str(gz_mirror)], timeout=5) == str(gz_mirror)
    assert sha256_file(tmp_path / spec.name) == spec.sha256


def test_fetch_stage_with_mirror_and_without_tensorflow(
    small_mnist: Path, http_mirror: str, tmp_path: Path
) -> None:
    """The stage command reads params.yaml, fetches all four files from MNIST_MIRROR."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["files"] = {
        key: spec_of(small_mnist / name).model_dump()
        for key, name in zip(
            ("train_images", "train_labels", "test_images", "test_labels"), NAMES, strict=True
        )
    }
    params["data"]["mirrors"] = ["https://127.0.0.1:9/unreachable/"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    (work / "data/raw").mkdir(parents=True)
    (work / "data/raw/stale.part").write_bytes(b"left by a killed run")
    probe = "import runpy, sys; runpy.run_module('pipeline.fetch', run_name='__main__')"
    check = "; assert 'tensorflow' not in sys.modules, 'fetch imported tensorflow'"
    env = {"PYTHONPATH": str(ROOT), "DVC_ROOT": str(work), "MNIST_MIRROR": http_mirror}
    run(["python", "-c", probe + check], work, **env)
    assert sorted(p.name for p in (work / "data/raw").iterdir()) == sorted(NAMES)
