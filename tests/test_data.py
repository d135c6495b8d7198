import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.data import read_idx, read_mnist_pair, sha256_file, write_idx
from pipeline.core.errors import DataError


def test_idx_round_trip(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "img", images)
    write_idx(tmp_path / "lab", np.array([1, 2, 3]))
    x, y = read_mnist_pair(tmp_path / "img", tmp_path / "lab", 10, (28, 28))
    assert x.shape == (3, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, images.astype(np.uint8))
    np.testing.assert_array_equal(y, [1, 2, 3])


def test_bad_magic_names_file_and_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"<html>not idx</html>")
    with pytest.raises(DataError, match=r"bad.*bad IDX magic number 0x3c68746d"):
        read_idx(path, 3)


def test_wrong_dimension_count(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", np.zeros(5))
    with pytest.raises(DataError, match="expected 0x00000803"):
        read_idx(tmp_path / "labels", 3)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "img"
    write_idx(path, np.zeros((4, 28, 28)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"shape \(4, 28, 28\).*but the file has 3052 bytes"):
        read_idx(path, 3)


def test_too_short_for_header(tmp_path: Path) -> None:
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="2 bytes, too short"):
        read_idx(path, 1)


def test_counts_disagree(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", np.zeros((4, 28, 28)))
    write_idx(tmp_path / "lab", np.zeros(5))
    with pytest.raises(DataError, match="holds 4 images but .* holds 5 labels"):
        read_mnist_pair(tmp_path / "img", tmp_path / "lab", 10, (28, 28))


def test_wrong_image_size(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", np.zeros((2, 32, 32)))
    write_idx(tmp_path / "lab", np.zeros(2))
    with pytest.raises(DataError, match=r"\(32, 32\), expected \(28, 28\)"):
        read_mnist_pair(tmp_path / "img", tmp_path / "lab", 10, (28, 28))


def test_label_out_of_range(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", np.zeros((2, 28, 28)))
    write_idx(tmp_path / "lab", np.array([3, 12]))
    with pytest.raises(DataError, match="label 12 is outside 0-9 "):
        read_mnist_pair(tmp_path / "img", tmp_path / "lab", 10, (28, 28))


def test_header_is_big_endian(tmp_path: Path) -> None:
    write_idx(tmp_path / "lab", np.zeros(258))
    assert (tmp_path / "lab").read_bytes()[:8] == b"\x00\x00\x08\x01" + struct.pack(">I", 258)


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ("size=1m", "no space left on the device writing {disk}/processed/train-00000.npy"),
        ("size=1m,ro", "cannot write {disk}/processed (Read-only file system;"),
    ],
    ids=["full", "read-only"],
)
def test_a_full_or_read_only_disk_keeps_no_half_file_and_says_so(
    tmp_path: Path, options: str, says: str
) -> None:
    """A real full (1 MB) or read-only tmpfs under the shard writer: no temporary file or folder
    is left, the command says which file, the free space and what to do in one line."""
    import subprocess
    import sys

    from helpers import ROOT, run_env, unavailable

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        unavailable(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        code = (
            "import sys, numpy as np\n"
            "from pathlib import Path\n"
            "from pipeline.core.errors import run_cli\n"
            "from pipeline.core.shards import Writing\n"
            "x, y = np.zeros((3000, 28, 28, 1), np.uint8), np.zeros(3000, np.uint8)\n"
            "def write():\n"
            "    with Writing(Path(sys.argv[1]) / 'processed') as writing:\n"
            "        writer = writing.writer('train', (28, 28, 1), 10, 128)\n"
            "        writer.add(x, y)\n"
            "        writing.commit({'splits': {'train': writer.close()}})\n"
            "run_cli(write)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(disk)], cwd=ROOT, env=run_env(),
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert says.format(disk=disk) in proc.stderr, proc.stderr
        assert "MB free there now" in proc.stderr and len(proc.stderr.splitlines()) == 1
        assert list(disk.iterdir()) == []  # no .processed.*.tmp folder left behind
    finally:
        subprocess.run(["umount", str(disk)], check=False)
