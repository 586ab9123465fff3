"""Where an hf:// file lives and what it must hash to, from the Hub itself (huggingface_hub).

`hf://datasets/<owner>/<repo>[@<revision>]/<path>` (also `models/`, `spaces/`):
1. the revision (default `main`) is resolved to its commit with one metadata request
   (`get_hf_file_metadata`), and everything below uses that commit, so the checksum and the
   bytes cannot come from two different versions of the file;
2. without a registry checksum, the Hub's own record of the file is the reference:
   `HfApi.get_paths_info` gives the LFS sha256 and size (or, for a small non-LFS file, its git
   blob id and size, checked as git computes it);
3. the bytes are fetched from the commit's `resolve` URL (`hf_hub_url`) by our resumable fetcher.
Why not `hf_hub_download` for the bytes: in the huggingface_hub we run (2.x) it downloads into a
process-unique temporary file that is deleted when the call fails, so a cut 40 GB archive starts
again from byte 0 on the next run; our fetcher keeps `<file>.partial` and continues it with a
Range request, and applies the stricter token rule (only over https, only to the exact Hub or
HF_ENDPOINT origin, never across a redirect: the Hub hands LFS files to a signed storage URL).
Tokens come from huggingface_hub's own lookup (HF_TOKEN or `huggingface-cli login`) and
`HF_ENDPOINT` is read when called (huggingface_hub reads it once, at import).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class HubFile:
    repo_type: str  # dataset | model | space
    repo_id: str
    revision: str
    path: str

    @property
    def pinned(self) -> bool:
        return bool(COMMIT.match(self.revision))

    def reference(self, revision: str | None = None) -> str:
        return f"hf://{self.repo_type}s/{self.repo_id}@{revision or self.revision}/{self.path}"


def parse(url: str) -> HubFile:
    """`hf://datasets/<owner>/<repo>[@rev]/<path>` -> HubFile, or ValueError naming the reference."""
    kind, _, rest = url.removeprefix("hf://").partition("/")
    if kind not in {"datasets", "models", "spaces"}:
        raise ValueError(f"{url}: expected hf://datasets|models|spaces/<owner>/<repo>[@revision]/<path>")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{url}: expected hf://{kind}/<owner>/<repo>[@revision]/<path>")
    repo, _, revision = parts[1].partition("@")
    return HubFile(kind[:-1], f"{parts[0]}/{repo}", revision or "main", "/".join(parts[2:]))


def endpoint_and_token(remote) -> tuple[str | None, bool | None]:
    """The endpoint to use (HF_ENDPOINT now, None: huggingface.co) and the `token` argument for
    huggingface_hub (None: its own lookup; False: send none)."""
    from segvol.download.transport import check_scheme

    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    if endpoint is None or endpoint.startswith("https://"):
        return endpoint, None
    check_scheme(endpoint + "/", remote)  # plain http needs the source's allow_http
    return endpoint, False


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _hub_error(url: str, error: BaseException) -> Exception:
    """A huggingface_hub exception as our one-line ValueError / RuntimeError."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return ValueError(
            f"{url}: gated on the Hub: accept its terms there, then log in with `huggingface-cli login` or set HF_TOKEN"
        )
    if isinstance(error, RepositoryNotFoundError):
        return ValueError(f"{url}: no such repository on the Hub (or it is private: log in or set HF_TOKEN)")
    if isinstance(error, RevisionNotFoundError):
        return ValueError(f"{url}: no such revision on the Hub")
    if isinstance(error, RemoteEntryNotFoundError):
        return ValueError(f"{url}: no such file in the repository at this revision")
    if isinstance(error, HfHubHTTPError):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return RuntimeError(f"{url}: the Hub answered {' '.join(first.split())}")
    return RuntimeError(f"{url}: cannot reach the Hub ({_one_line(error)}); rerun when it is reachable")


def resolve_commit(url: str, ref: HubFile, endpoint: str | None, token, timeout_s: float) -> str:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    if ref.pinned:
        return ref.revision
    # No library retries (their backoff takes ~25 s to give up on a dead endpoint): nothing is
    # lost by failing here, the byte transfer that follows has its own retries and resume.
    try:
        metadata = get_hf_file_metadata(
            hf_hub_url(ref.repo_id, ref.path, repo_type=ref.repo_type, revision=ref.revision, endpoint=endpoint),
            token=token,
            timeout=timeout_s,
            endpoint=endpoint,
            retry_on_errors=False,
        )
    except Exception as error:  # every Hub failure becomes one line
        raise _hub_error(url, error) from error
    if not metadata.commit_hash:
        raise ValueError(
            f"{url}: {endpoint or 'the Hub'} gave no commit for revision {ref.revision!r} (not a Hub endpoint?)"
        )
    return metadata.commit_hash


def with_hub_checksum(url: str, remote, ref: HubFile, commit: str, endpoint: str | None, token):
    """`remote` with the Hub's sha256 and size filled in where the registry has no checksum.

    Returns (remote, git blob id or None, where the checksum came from)."""
    if remote.sha256 is not None or remote.md5 is not None:
        return remote, None, "the registry"
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        infos = HfApi(endpoint=endpoint, token=token).get_paths_info(
            ref.repo_id, [ref.path], repo_type=ref.repo_type, revision=commit
        )
    except Exception as error:
        raise _hub_error(url, error) from error
    info = next((i for i in infos if isinstance(i, RepoFile) and i.path == ref.path), None)
    if info is None:
        raise ValueError(f"{url}: no such file in the repository at commit {commit}")
    if remote.size is not None and remote.size != info.size:
        raise ValueError(
            f"{url}: the Hub lists {info.size} bytes at commit {commit} but the registry expects {remote.size}"
        )
    if info.lfs is not None:
        return replace(remote, sha256=info.lfs.sha256, size=info.lfs.size), None, "the Hub's LFS sha256"
    return replace(remote, size=info.size), info.blob_id, "the Hub's git blob id"


def git_blob_id(path: Path) -> str:
    """The id git gives a file's content (sha1 of "blob <size>\\0" + bytes)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def locate(remote, timeout_s: float):
    """(resolve URL at the commit, `remote` with the Hub's checksum filled in where the registry
    has none, where that checksum comes from, git blob id to check or None, the pinned hf://
    reference to suggest or None when it is pinned already)."""
    from huggingface_hub import hf_hub_url

    ref = parse(remote.url)
    endpoint, token = endpoint_and_token(remote)
    commit = resolve_commit(remote.url, ref, endpoint, token, timeout_s)
    checked, blob_id, source = with_hub_checksum(remote.url, remote, ref, commit, endpoint, token)
    url = hf_hub_url(ref.repo_id, ref.path, repo_type=ref.repo_type, revision=commit, endpoint=endpoint)
    return url, checked, source, blob_id, None if ref.pinned else ref.reference(commit)
