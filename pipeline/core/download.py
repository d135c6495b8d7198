"""Verified downloads: a file from the first of several mirrors that has it intact.

A source is a folder, a file:// URL or an http(s) URL holding `<name>.gz` or `<name>`. A download
goes to a temporary name and is renamed only once its size and SHA-256 match, so the target
folder never holds a partial or wrong file under a final name. https is never downgraded by a
redirect. No TensorFlow or MLflow here.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from pipeline.core.config import FileSpec
from pipeline.core.data import sha256_file
from pipeline.core.errors import DataError

MIRROR_ENV = "DATA_MIRROR"


def sources(mirrors: list[str], *env: str | None) -> list[str]:
    """The places to try, in order: the environment's mirrors (DATA_MIRROR, then the dataset's
    own variable such as MNIST_MIRROR) where set, then the configured mirrors."""
    return list(dict.fromkeys([e for e in env if e] + list(mirrors)))


def env_mirrors(mirror_env: str | None) -> list[str | None]:
    """The values of DATA_MIRROR and of the dataset's own variable (`data.mirror_env`)."""
    return [os.environ.get(MIRROR_ENV), os.environ.get(mirror_env) if mirror_env else None]


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
    Over HTTP the plain name is tried only when the server answered the .gz name with an HTTP
    error: a silent or broken server costs one timeout, not one per name.
    """
    is_url = "://" in source
    last_error: Exception = FileNotFoundError(f"no {filename}.gz or {filename} in {source}")
    for candidate in (filename + ".gz", filename):
        gz = candidate.endswith(".gz")
        if is_url:
            url = source.rstrip("/") + "/" + candidate
            try:
                response = _OPENER.open(url, timeout=timeout)
            except urllib.error.HTTPError as exc:
                last_error = exc
                continue
            with response:
                kind = response.headers.get("Content-Type", "")
                if kind.startswith(("text/html", "application/xhtml")):
                    raise DataError(f"{url} answered a web page ({kind}), not the file")
                yield response, int(response.headers.get("Content-Length") or 0), gz
            return
        path = Path(source).expanduser() / candidate
        if path.is_file():
            with path.open("rb") as fh:
                yield fh, path.stat().st_size, gz
            return
    raise last_error


def download(
    source: str, spec: FileSpec, dest: Path, timeout: float, min_speed_kb_s: float = 0
) -> None:
    """Copy `spec` from `source` to `dest`, verifying size and SHA-256 before the final rename.

    The partial file is this process's own (`.<name>.<pid>.part`) and removed on any failure.
    """
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
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
            counted = _Counting(stream, bar, timeout, min_speed_kb_s * 1000)
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
        if tmp.exists():  # on a read-only folder there is none, and unlink would fail
            tmp.unlink()


class _Counting:
    """A stream that advances a progress bar by the compressed bytes read, and gives up on a
    source that stays below `min_rate` bytes per second over a whole `window` of seconds.

    Reads return what has arrived (`read1`), so a trickle is seen while it trickles.
    """

    def __init__(self, stream: BinaryIO, bar: tqdm, window: float, min_rate: float) -> None:
        self.stream, self.bar = stream, bar
        self.window, self.min_rate = window, min_rate
        self.since, self.got = time.monotonic(), 0
        self._read = getattr(stream, "read1", stream.read)

    def read(self, n: int = -1) -> bytes:
        block = self._read(n if n and n > 0 else 1 << 20)
        self.bar.update(len(block))
        self.got += len(block)
        elapsed = time.monotonic() - self.since
        if self.min_rate and elapsed >= self.window:
            rate = self.got / elapsed
            if rate < self.min_rate:
                raise DataError(
                    f"sent {rate / 1000:.1f} kB/s over {elapsed:.0f} s, below the minimum "
                    f"{self.min_rate / 1000:g} kB/s (data.min_speed_kb_s)"
                )
            self.since, self.got = time.monotonic(), 0
        return block


# Everything a misbehaving source can raise while a file is opened, read and decompressed.
SOURCE_ERRORS = (
    DataError,
    OSError,  # refused, reset, timed out, a missing folder; gzip.BadGzipFile; urllib's errors
    EOFError,  # a gzip stream cut short
    zlib.error,  # a gzip header followed by garbage
    http.client.HTTPException,  # a bad status line, a body cut short
    ValueError,  # a malformed URL
)


def reason(exc: BaseException) -> str:
    """One line saying why a source failed."""
    return " ".join(_reason(exc).split())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, zlib.error | gzip.BadGzipFile | EOFError):
        return f"not a valid gzip file ({exc or type(exc).__name__})"
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    if isinstance(exc, http.client.HTTPException):
        return f"broken HTTP answer ({type(exc).__name__}: {str(exc).strip()[:80]})"
    return str(exc) or type(exc).__name__


def fetch_file(
    spec: FileSpec,
    raw_dir: Path,
    places: list[str],
    timeout: float,
    min_speed_kb_s: float = 0,
) -> str:
    """Make `raw_dir/spec.name` a verified copy; return where it came from ('present' if kept).

    Each source that fails is reported in one line and the next one tried; when none is left,
    the error lists every source with its reason.
    """
    dest = raw_dir / spec.name
    if is_verified(dest, spec):
        return "present"
    failures = []
    for source in places:
        try:
            download(source, spec, dest, timeout, min_speed_kb_s)
            return source
        except SOURCE_ERRORS as exc:
            why = reason(exc)
            failures.append(f"  {source}: {why}")
            print(
                f"fetch: {spec.name} from {source} failed ({why}); trying the next source",
                file=sys.stderr,
            )
    if not failures:
        failures.append("  (no source: data.mirrors is empty and no mirror variable is set)")
    raise DataError(
        f"could not fetch {spec.name} from any source:\n" + "\n".join(failures) + "\n"
        f"Set {MIRROR_ENV} to a folder or URL holding the dataset's files "
        f"(e.g. export {MIRROR_ENV}=/path/to/files) and run again."
    )
