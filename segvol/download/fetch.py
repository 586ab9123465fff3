"""Resumable, checksummed HTTP downloads (stdlib urllib only).

A file is fetched into `<dest>.partial`; an interrupted transfer continues from the bytes already
on disk with an HTTP `Range` request. Only after its size and sha256 match the registry is the
partial file renamed to `<dest>`, so a half-fetched or corrupt file never sits at the final path.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Hard ceiling on HTTP requests for one file, whatever the progress: a server that keeps
# handing out a few bytes per connection must not keep a job alive forever.
MAX_REQUESTS = 10_000
# Retryable HTTP statuses: timeouts, rate limits and server-side trouble.
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset source: where it lives and what it must hash to."""

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None


class TransientError(Exception):
    """A failure worth retrying (cut connection, timeout, 5xx)."""


def resolve_url(url: str) -> str:
    """`hf://datasets/<owner>/<repo>[@rev]/<path>` -> the Hub's plain HTTPS `resolve` URL.

    The Hub serves LFS files with Range support, so the same resumable fetcher handles them.
    `HF_ENDPOINT` is honoured through huggingface_hub's URL builder (no network access here).
    """
    if not url.startswith("hf://"):
        return url
    rest = url[len("hf://"):]
    kind, _, rest = rest.partition("/")
    if kind not in {"datasets", "models", "spaces"}:
        raise ValueError(f"{url}: expected hf://datasets|models|spaces/<owner>/<repo>/<path>")
    parts = rest.split("/")
    if len(parts) < 3:
        raise ValueError(f"{url}: expected hf://{kind}/<owner>/<repo>[@revision]/<path>")
    owner, repo_rev, path = parts[0], parts[1], "/".join(parts[2:])
    repo, _, revision = repo_rev.partition("@")
    from huggingface_hub import hf_hub_url

    return hf_hub_url(f"{owner}/{repo}", path, repo_type=kind[:-1], revision=revision or None)


def sha256_of(path: Path, progress: bool = False) -> str:
    digest = hashlib.sha256()
    bar = _bar(path.stat().st_size, 0, f"sha256 {path.name}", progress)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
            bar.update(len(block))
    bar.close()
    return digest.hexdigest()


def _bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        disable=not enabled, file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30,
    )


def _headers(url: str, offset: int) -> dict[str, str]:
    headers = {"User-Agent": "segvol-download/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    token = os.environ.get("HF_TOKEN")
    if token and "huggingface.co" in url:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _total_from(response, offset: int) -> int | None:
    """Full file size announced by the server (Content-Range on 206, Content-Length on 200)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (offset if response.status == 206 else 0)


def _transfer(url: str, partial: Path, remote: RemoteFile, timeout: float, bar) -> None:
    """One HTTP request appending to `partial`. Raises TransientError when worth retrying."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers=_headers(url, offset))
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Nothing left to send from this offset: the partial file is as long as the server's.
            if remote.size is not None and offset < remote.size:
                raise ValueError(
                    f"{remote.url}: the server has only {offset} bytes but the registry expects "
                    f"{remote.size} (truncated upstream file?)"
                ) from None
            return
        if error.code in TRANSIENT_STATUS:
            raise TransientError(f"HTTP {error.code}") from error
        raise ValueError(f"{remote.url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise TransientError(str(error)) from error

    with response:
        if offset and response.status != 206:
            # The server ignored Range: start again from byte 0 rather than append a duplicate.
            log.info("%s: server ignored the Range request; restarting from byte 0", remote.url)
            offset = 0
            bar.reset()
        announced = _total_from(response, offset)
        if remote.size is not None and announced is not None and announced != remote.size:
            raise ValueError(
                f"{remote.url}: the server announces {announced} bytes but the registry expects "
                f"{remote.size} (changed or truncated upstream file)"
            )
        if bar.total is None and announced is not None:
            bar.total = announced
        expected_body = None if announced is None else announced - offset
        received = 0
        with open(partial, "ab" if offset else "wb") as sink:
            try:
                while block := response.read(CHUNK_BYTES):
                    sink.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as error:
                raise TransientError(f"connection lost after {received} bytes: {error}") from error
        if expected_body is not None and received < expected_body:
            raise TransientError(f"connection closed after {received} of {expected_body} bytes")


def fetch(
    remote: RemoteFile,
    dest_dir: str | os.PathLike,
    *,
    retries: int = 5,
    backoff_s: float = 2.0,
    max_backoff_s: float = 120.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download `remote` into `dest_dir/remote.filename`, resuming and verifying; return the path.

    `retries` counts consecutive failed requests that brought no new bytes; a request that made
    progress resets the count, so a flaky link still finishes a 40 GB archive. A size or
    sha256 mismatch removes the partial file and raises ValueError (a retry would not fix it).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.filename
    partial = dest_dir / (remote.filename + ".partial")
    if final.exists():
        if _matches(final, remote, progress):
            log.info("%s: already downloaded and verified", final)
            return final
        log.warning("%s: does not match the registry; downloading again", final)
        final.unlink()

    url = resolve_url(remote.url)
    failures = 0
    start = partial.stat().st_size if partial.exists() else 0
    if remote.size is not None and start > remote.size:
        partial.unlink()
        start = 0
    bar = _bar(remote.size, start, remote.filename, progress)
    try:
        for _request in range(MAX_REQUESTS):
            before = partial.stat().st_size if partial.exists() else 0
            if remote.size is not None and before == remote.size:
                break
            try:
                _transfer(url, partial, remote, timeout_s, bar)
                break
            except TransientError as error:
                after = partial.stat().st_size if partial.exists() else 0
                failures = 0 if after > before else failures + 1
                if failures > retries:
                    raise RuntimeError(
                        f"{remote.url}: giving up after {retries} retries without progress "
                        f"({after} bytes kept in {partial}; rerun to resume): {error}"
                    ) from error
                delay = 0.0 if after > before else min(max_backoff_s, backoff_s * 2 ** (failures - 1))
                log.warning("%s: %s; retrying in %.1f s (resume at byte %d)", remote.url, error, delay, after)
                sleep(delay)
        else:
            raise RuntimeError(f"{remote.url}: no complete download after {MAX_REQUESTS} requests")
    finally:
        bar.close()

    if not partial.exists():
        raise ValueError(f"{remote.url}: the server sent no data")
    try:
        _verify(partial, remote, progress)
    except ValueError:
        partial.unlink()
        raise
    os.replace(partial, final)
    return final


def _verify(path: Path, remote: RemoteFile, progress: bool) -> None:
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise ValueError(
            f"{remote.url}: got {size} bytes but the registry expects {remote.size} "
            f"(truncated or changed file; removed)"
        )
    if remote.sha256 is not None:
        digest = sha256_of(path, progress)
        if digest != remote.sha256.lower():
            raise ValueError(
                f"{remote.url}: sha256 mismatch: got {digest}, the registry expects "
                f"{remote.sha256} (corrupt or changed file; removed)"
            )
    else:
        log.warning("%s: no sha256 in the registry; the file is unverified", remote.url)


def _matches(path: Path, remote: RemoteFile, progress: bool) -> bool:
    try:
        _verify(path, remote, progress)
    except ValueError:
        return False
    return True

