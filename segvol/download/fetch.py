"""Resumable, verified HTTPS downloads (stdlib urllib); for hf:// files huggingface_hub resolves
the commit, the checksum and the token (`segvol.download.hub`) and the bytes come through here.

A file is fetched into `<dest>.partial`; an interrupted transfer continues from the bytes
already on disk with an HTTP `Range` request. A file is never "done" until it is verified:
- its size must equal what the server announced (Content-Length / Content-Range) and the
  registry's `size`; its `sha256` and/or `md5` must match the registry when given (for hf://
  files without one: the Hub's LFS sha256 and size, or its git blob id, at the resolved commit);
- without any such checksum, an archive's own integrity (zip CRC-32 of every member, a full
  read of a tar / gzip stream) must hold as well, and a file that has neither a checksum nor an
  announced size nor an internal checksum is refused;
- only then is `<dest>.sha256` (sha256sum format) written and the file renamed to `<dest>`. The
  observed sha256 is logged so that it can be pinned in the registry. On a later run a file
  counts as downloaded only when it still hashes to the registry's checksum or to its `.sha256`
  record; anything else under the final name is resumed (moved back to `.partial`) or fetched again.

Transport rules (why not plain `urlopen`): plain `http://` is refused unless the registry source
opts in with `allow_http: true`, and a redirect from https to http is always refused. The Hugging
Face token (huggingface_hub's own lookup: `HF_TOKEN` or `huggingface-cli login`) is sent only over
https to exactly huggingface.co or the host of an https `HF_ENDPOINT`, and never across a
redirect to another origin (the Hub sends LFS files through signed CDN URLs that need no token).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from segvol.download.transport import check_scheme

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Hard ceiling on HTTP requests for one file, whatever the progress: a server that keeps
# handing out a few bytes per connection must not keep a job alive forever.
MAX_REQUESTS = 10_000
# Retryable HTTP statuses: timeouts, rate limits and server-side trouble.
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset source: where it lives and what it must hash to."""

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None
    md5: str | None = None
    allow_http: bool = False  # the registry source's explicit opt-in to plain http


class TransientError(Exception):
    """A failure worth retrying (cut connection, timeout, 5xx)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- transport policy


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _token_origins() -> set[tuple[str, str, int | None]]:
    origins = {_origin(f"https://{HUB_HOST}/")}
    endpoint = os.environ.get("HF_ENDPOINT", "")
    if endpoint.startswith("https://"):
        origins.add(_origin(endpoint))
    return origins


def _token_for(url: str) -> str | None:
    """The Hugging Face token, only for https URLs of exactly the Hub (or HF_ENDPOINT's) origin."""
    if _origin(url) not in _token_origins():
        return None
    from huggingface_hub import get_token

    return get_token()


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Re-checks the scheme of every hop and re-attaches the token only within one origin."""

    def __init__(self, remote: RemoteFile):
        self.remote = remote

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        check_scheme(new.full_url, self.remote, via=req.full_url)
        token = _token_for(new.full_url)
        if token and _origin(new.full_url) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", f"Bearer {token}")
        return new


def _open(url: str, remote: RemoteFile, offset: int, timeout: float):
    check_scheme(url, remote)
    request = urllib.request.Request(url, headers={"User-Agent": "segvol-download/1", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    token = _token_for(url)
    if token:
        # Unredirected: urllib would otherwise copy it to whatever host a redirect names.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    return urllib.request.build_opener(_Redirects(remote)).open(request, timeout=timeout)


# --------------------------------------------------------------------------- checksums


def digests(path: Path, kinds=("sha256",), progress: bool = False) -> dict[str, str]:
    """Hex digests of `path` for each hashlib name in `kinds`, in one read."""
    hashers = {kind: hashlib.new(kind) for kind in kinds}
    bar = _bar(path.stat().st_size, 0, f"{'+'.join(kinds)} {path.name}", progress)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            for hasher in hashers.values():
                hasher.update(block)
            bar.update(len(block))
    bar.close()
    return {kind: hasher.hexdigest() for kind, hasher in hashers.items()}


def record_path(path: Path) -> Path:
    """Where the sha256 observed for a verified download is recorded (sha256sum format)."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    record = record_path(path)
    if not record.is_file():
        return None
    fields = record.read_text(encoding="utf-8").split()
    return fields[0].lower() if len(fields) == 2 and fields[1] == path.name and len(fields[0]) == 64 else None


def _bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )


# --------------------------------------------------------------------------- transfer


def _total_from(response, offset: int) -> int | None:
    """Full file size announced by the server (Content-Range on 206, Content-Length on 200)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (offset if response.status == 206 else 0)


def _http_error(remote: RemoteFile, error: urllib.error.HTTPError) -> ValueError:
    return ValueError(f"{remote.url}: HTTP {error.code} {_one_line(error.reason)}")


def _transfer(url: str, partial: Path, remote: RemoteFile, timeout: float, bar) -> int | None:
    """One HTTP request appending to `partial`; returns the file size the server announced (None:
    unknown). Raises TransientError when worth retrying."""
    offset = partial.stat().st_size if partial.exists() else 0
    try:
        response = _open(url, remote, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Nothing left to send from this offset: the server's file is `offset` bytes or shorter.
            announced = error.headers.get("Content-Range", "")
            total = int(announced.rsplit("/", 1)[1]) if "/" in announced and not announced.endswith("/*") else None
            if total is not None and total < offset:
                partial.unlink()
                raise TransientError(
                    f"the kept partial file is longer than the server's {total} bytes; restarting"
                ) from error
            if remote.size is not None and offset < remote.size:
                raise ValueError(
                    f"{remote.url}: the server has only {offset} bytes but the registry expects "
                    f"{remote.size} (truncated upstream file?)"
                ) from None
            return total
        if error.code in TRANSIENT_STATUS:
            raise TransientError(f"HTTP {error.code}") from error
        raise _http_error(remote, error) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise TransientError(_one_line(error)) from error

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
                raise TransientError(f"connection lost after {received} bytes: {_one_line(error)}") from error
        if expected_body is not None and received < expected_body:
            raise TransientError(f"connection closed after {received} of {expected_body} bytes")
    return announced


def _offline_hub() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


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
    progress resets the count, so a flaky link still finishes a 40 GB archive. A size, checksum
    or integrity failure of a complete transfer removes the partial file and raises ValueError
    (the next run fetches it again from byte 0). Processes fetching the same file take turns (a
    lock file next to it): the shard jobs of one manifest all need the manifest.
    """
    name = remote.filename
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{remote.url}: {remote.filename!r} is not a plain file name to save it as")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest_dir / f".{remote.filename}.lock"):
        return _fetch(
            remote,
            dest_dir,
            retries=retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            timeout_s=timeout_s,
            progress=progress,
            sleep=sleep,
        )


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an flock on `lock_path`, and remove the file when done: a waiter that locked a file
    already removed by the previous holder notices (another inode at the path) and tries again."""
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            if os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(descriptor)


def _fetch(
    remote: RemoteFile,
    dest_dir: Path,
    *,
    retries: int,
    backoff_s: float,
    max_backoff_s: float,
    timeout_s: float,
    progress: bool,
    sleep: Callable[[float], None],
) -> Path:
    final = dest_dir / remote.filename
    partial = dest_dir / (remote.filename + ".partial")
    if final.exists():
        if _already_verified(final, remote, progress):
            log.info("%s: already downloaded and verified", final)
            return final
        # Not proven complete (e.g. kept by an older version without a checksum): resume it.
        log.warning("%s: not verified (no matching checksum or record); resuming it as a partial download", final)
        record_path(final).unlink(missing_ok=True)
        os.replace(final, partial)

    url, checked, source, blob_id, pinned = remote.url, remote, "the registry", None, None
    if remote.url.startswith("hf://"):
        if _offline_hub():
            raise ValueError(
                f"{remote.url}: HF_HUB_OFFLINE is set and {final} is not downloaded yet; unset it or "
                f"run the download where the Hub is reachable"
            )
        from segvol.download import hub

        url, checked, source, blob_id, pinned = hub.locate(remote, timeout_s)
    if partial.exists() and checked.size is not None and partial.stat().st_size > checked.size:
        partial.unlink()
    transfer = {
        "retries": retries,
        "backoff_s": backoff_s,
        "max_backoff_s": max_backoff_s,
        "timeout_s": timeout_s,
        "progress": progress,
        "sleep": sleep,
    }

    def attempt() -> tuple[str, str]:
        announced = _download(url, partial, final.name, checked, **transfer)
        try:
            if blob_id is not None:
                from segvol.download.hub import git_blob_id

                observed = git_blob_id(partial)
                if observed != blob_id:
                    raise ValueError(
                        f"{remote.url}: git blob id mismatch: got {observed}, the Hub lists "
                        f"{blob_id} (removed; rerun to fetch it again)"
                    )
            return _verify(partial, final.name, checked, announced, progress, source, blob_id is not None)
        except ValueError:
            partial.unlink(missing_ok=True)
            raise

    resumed = partial.exists() and partial.stat().st_size > 0
    try:
        sha256, how = attempt()
    except ValueError as error:
        if not resumed:
            raise
        # The kept bytes were not a prefix of this file (changed upstream, or damaged on disk).
        log.warning("%s: the resumed file fails verification (%s); fetching it again from byte 0", remote.url, error)
        sha256, how = attempt()
    _finish(partial, final, sha256)
    if not _has_checksum(remote) or pinned:
        advice = [f"url: {pinned}"] if pinned else []
        if not _has_checksum(remote):
            advice += [f"sha256: {sha256}", f"size: {final.stat().st_size}"]
        log.warning(
            "%s: verified by %s. To pin it, use in its registry entry: %s (recorded in %s)",
            remote.url,
            how,
            ", ".join(advice),
            record_path(final),
        )
    return final


def _finish(path: Path, final: Path, sha256: str) -> None:
    """Record the verified sha256, then move the file to its final name (in that order: a file
    under the final name always has its record)."""
    record = record_path(final)
    record.with_name(record.name + ".partial").write_text(f"{sha256}  {final.name}\n", encoding="utf-8")
    os.replace(record.with_name(record.name + ".partial"), record)
    os.replace(path, final)


def _download(
    url: str,
    partial: Path,
    name: str,
    remote: RemoteFile,
    *,
    retries: int,
    backoff_s: float,
    max_backoff_s: float,
    timeout_s: float,
    progress: bool,
    sleep: Callable[[float], None],
) -> int | None:
    """Fill `partial` until the server has nothing more to send; return the size it announced."""
    from segvol.download.extract import can_check_integrity, check_integrity

    failures = 0
    announced = None
    checkable = can_check_integrity(name)
    bar = _bar(remote.size, partial.stat().st_size if partial.exists() else 0, name, progress)
    try:
        for _request in range(MAX_REQUESTS):
            before = partial.stat().st_size if partial.exists() else 0
            if remote.size is not None and before == remote.size:
                break
            try:
                announced = _transfer(url, partial, remote, timeout_s, bar)
                if announced is None and checkable and not _has_checksum(remote):
                    # No size from the server: a connection closed early looks like the end.
                    try:
                        check_integrity(partial, name)
                    except ValueError as error:
                        raise TransientError(f"the file is incomplete ({_one_line(error)})") from None
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
    return announced


def _has_checksum(remote: RemoteFile) -> bool:
    return remote.sha256 is not None or remote.md5 is not None


def _verify(
    path: Path,
    name: str,
    remote: RemoteFile,
    announced: int | None,
    progress: bool,
    source: str = "the registry",
    listed_size: bool = False,
) -> tuple[str, str]:
    """Raise ValueError unless `path` is complete; return its sha256 and how it was verified.

    `source` says where `remote`'s checksums come from; `listed_size`: its size was checked
    together with a content id by the caller (the Hub's git blob id)."""
    from segvol.download.extract import can_check_integrity, check_integrity

    size = path.stat().st_size
    evidence = []
    if remote.size is not None and size != remote.size:
        raise ValueError(
            f"{remote.url}: got {size} bytes but {source} expects {remote.size} (truncated or changed file; removed)"
        )
    if announced is not None:
        if size != announced:
            raise ValueError(f"{remote.url}: got {size} bytes but the server announced {announced} (removed)")
        evidence.append("the size the server announced")
    kinds = ("sha256", "md5") if remote.md5 is not None else ("sha256",)
    observed = digests(path, kinds, progress)
    for kind in kinds:
        expected = getattr(remote, kind)
        if expected is not None:
            if observed[kind] != expected.lower():
                raise ValueError(
                    f"{remote.url}: {kind} mismatch: got {observed[kind]}, {source} expects "
                    f"{expected} (corrupt or changed file; removed)"
                )
            evidence.append(f"{source} {kind}" if source == "the registry" else source)
    if listed_size:
        evidence.append("the Hub's git blob id and size")
    if not _has_checksum(remote):
        if can_check_integrity(name):
            try:
                check_integrity(path, name)
            except ValueError as error:
                raise ValueError(f"{remote.url}: {_one_line(error)} (removed; rerun to fetch it again)") from None
            evidence.append("its own CRCs")
        if not evidence:
            raise ValueError(
                f"{remote.url}: cannot be verified (no checksum in the registry, no size from the "
                f"server, and {name} has no internal checksum); add its sha256 or md5 to the registry"
            )
    return observed["sha256"], " and ".join(evidence)


def _already_verified(path: Path, remote: RemoteFile, progress: bool) -> bool:
    """True when `path` still hashes to the registry's checksums or to its own `.sha256` record."""
    if remote.size is not None and path.stat().st_size != remote.size:
        return False
    expected = {kind: getattr(remote, kind).lower() for kind in ("sha256", "md5") if getattr(remote, kind)}
    if not expected:
        recorded = recorded_sha256(path)
        if recorded is None:
            return False
        expected = {"sha256": recorded}
    return digests(path, tuple(expected), progress) == expected
