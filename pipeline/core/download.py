"""Verified downloads: a file from the first of several mirrors that has it intact.

A source is a folder, a file:// URL or an http(s) URL holding `<name>.gz` or `<name>`. A download
goes to a temporary name and is renamed only once its size and SHA-256 match, so the target
folder never holds a partial or wrong file under a final name. https is never downgraded by a
redirect. No TensorFlow or MLflow here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from pipeline.core.config import FileSpec
from pipeline.core.data import sha256_file
from pipeline.core.errors import DataError

MIRROR_ENV = "MNIST_MIRROR"


def sources(mirrors: list[str], env: str | None) -> list[str]:
    """The places to try, in order: MNIST_MIRROR first when set, then the configured mirrors."""
    return ([env] if env else []) + list(mirrors)


class NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, except from https to anything else: a mirror is never downgraded."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        if req.full_url.startswith("https://") and not newurl.startswith("https://"):
            raise urllib.error.URLError(f"refused redirect from {req.full_url} to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(NoDowngradeRedirects)


def is_verified(path: Path, spec: FileSpec) -> bool:
    return (
        path.is_file() and path.stat().st_size == spec.bytes and sha256_file(path) == spec.sha256
    )


@contextmanager
def _open_source(
    source: str, filename: str, timeout: float
) -> Iterator[tuple[BinaryIO, int, bool]]:
    """Open `filename` at `source`, trying `<filename>.gz` first.

    Yields the stream, its size in bytes (0 when unknown) and whether it is gzip-compressed.
    """
    is_url = "://" in source
    last_error: Exception = FileNotFoundError(f"no {filename}.gz or {filename} in {source}")
    for candidate in (filename + ".gz", filename):
        gz = candidate.endswith(".gz")
        if is_url:
            url = source.rstrip("/") + "/" + candidate
            try:
                response = _OPENER.open(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = exc
                continue
            with response:
                yield response, int(response.headers.get("Content-Length") or 0), gz
            return
        path = Path(source).expanduser() / candidate
        if path.is_file():
            with path.open("rb") as fh:
                yield fh, path.stat().st_size, gz
            return
    raise last_error


def download(source: str, spec: FileSpec, dest: Path, timeout: float) -> None:
    """Copy `spec` from `source` to `dest`, verifying size and SHA-256 before the final rename."""
    tmp = dest.with_name(f".{dest.name}.part")
    digest = hashlib.sha256()
    written = 0
    try:
        with (
            _open_source(source, spec.name, timeout) as (stream, size, gz),
            tqdm(
                total=size or None,
                unit="B",
                unit_scale=True,
                desc=spec.name,
                leave=False,
                disable=None,  # a bar on a terminal, nothing in a log
            ) as bar,
            tmp.open("wb") as out,
        ):
            counted = _Counting(stream, bar)
            reader = gzip.GzipFile(fileobj=counted) if gz else counted
            while block := reader.read(1 << 20):
                written += len(block)
                if written > spec.bytes:
                    raise DataError(f"more than the expected {spec.bytes} bytes")
                digest.update(block)
                out.write(block)
        if written != spec.bytes:
            raise DataError(f"got {written} bytes, expected {spec.bytes}")
        if digest.hexdigest() != spec.sha256:
            raise DataError(f"SHA-256 {digest.hexdigest()} does not match {spec.sha256}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class _Counting:
    """A stream that advances a progress bar by the compressed bytes read."""

    def __init__(self, stream: BinaryIO, bar: tqdm) -> None:
        self.stream, self.bar = stream, bar

    def read(self, n: int = -1) -> bytes:
        block = self.stream.read(n)
        self.bar.update(len(block))
        return block


def fetch_file(spec: FileSpec, raw_dir: Path, places: list[str], timeout: float) -> str:
    """Make `raw_dir/spec.name` a verified copy; return where it came from ('present' if kept)."""
    dest = raw_dir / spec.name
    if is_verified(dest, spec):
        return "present"
    failures = []
    for source in places:
        try:
            download(source, spec, dest, timeout)
            return source
        except (DataError, OSError, EOFError, gzip.BadGzipFile, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"  {source}: {reason}")
            print(
                f"fetch: {spec.name} from {source} failed ({reason}); trying the next source",
                file=sys.stderr,
            )
    raise DataError(
        f"could not fetch {spec.name} from any source:\n" + "\n".join(failures) + "\n"
        f"Set {MIRROR_ENV} to a folder or URL holding the MNIST files "
        f"(e.g. export {MIRROR_ENV}=/path/to/mnist) and run again."
    )
