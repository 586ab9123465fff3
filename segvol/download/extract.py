"""Safe archive extraction (zip, tar, tar.gz/bz2/xz).

Every member is checked before the first byte is written: no absolute paths, no `..`, no links
that leave the target, no device files, and member count and total unpacked size under limits
(against zip/tar bombs). `extract_archive` unpacks into a temporary sibling and renames it into
place, so a refused or failed archive leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segvol.io.atomic import atomic_path

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class Limits:
    max_members: int = 1_000_000
    max_total_bytes: int = 4 << 40  # 4 TiB: far above any dataset of the paper, far below a bomb


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _safe_name(archive: Path, name: str) -> str:
    """The member name as a clean relative POSIX path, or ValueError."""
    if "\x00" in name:
        raise ValueError(f"{archive}: member name with a NUL byte refused: {name!r}")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise ValueError(f"{archive}: absolute member path refused: {name!r}")
    if ".." in PurePosixPath(unified).parts:
        raise ValueError(f"{archive}: member path with '..' refused: {name!r}")
    return posixpath.normpath(unified)


def _check_link(archive: Path, member: str, target: str, hard: bool) -> None:
    """A link may point anywhere inside the extraction folder, never outside it."""
    unified = target.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise ValueError(f"{archive}: link {member!r} -> absolute path {target!r} refused")
    # Hard-link targets are archive-relative; symlink targets are relative to the link's folder.
    base = "" if hard else posixpath.dirname(member)
    resolved = posixpath.normpath(posixpath.join(base, unified))
    if resolved == ".." or resolved.startswith("../"):
        raise ValueError(f"{archive}: link {member!r} -> {target!r} escapes the target folder")


def _check_totals(archive: Path, count: int, total: int, limits: Limits) -> None:
    if count > limits.max_members:
        raise ValueError(f"{archive}: {count} members exceed the limit of {limits.max_members}")
    if total > limits.max_total_bytes:
        raise ValueError(
            f"{archive}: {total} unpacked bytes exceed the limit of {limits.max_total_bytes}"
        )


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _extract_zip(archive: Path, dest: Path, limits: Limits) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        _check_totals(archive, len(infos), sum(i.file_size for i in infos), limits)
        for info in infos:
            name = _safe_name(archive, info.filename)
            if _zip_is_symlink(info):
                target = bundle.read(info).decode("utf-8", "replace")
                _check_link(archive, name, target, hard=False)
        for info in infos:
            if _zip_is_symlink(info):
                # zipfile would write the link text as a regular file: make it a real link.
                name = _safe_name(archive, info.filename)
                link = dest / name
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(bundle.read(info).decode("utf-8"), link)
            else:
                bundle.extract(info, dest)


def _extract_tar(archive: Path, dest: Path, limits: Limits) -> None:
    with tarfile.open(archive, "r:*") as bundle:
        members = bundle.getmembers()
        _check_totals(archive, len(members), sum(m.size for m in members if m.isfile()), limits)
        for member in members:
            name = _safe_name(archive, member.name)
            if member.issym() or member.islnk():
                _check_link(archive, name, member.linkname, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive}: special file {member.name!r} (device/fifo) refused")
        # The stdlib 'data' filter re-checks the same rules (defence in depth).
        bundle.extractall(dest, members=members, filter="data")


def extract_into(archive: str | os.PathLike, dest: str | os.PathLike, limits: Limits = Limits()) -> None:
    """Unpack `archive` into the existing folder `dest` after checking every member."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    dest.mkdir(parents=True, exist_ok=True)
    lower = archive.name.lower()
    try:
        if lower.endswith(".zip"):
            _extract_zip(archive, dest, limits)
        elif lower.endswith(ARCHIVE_SUFFIXES):
            _extract_tar(archive, dest, limits)
        else:
            raise ValueError(f"{archive}: not a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise ValueError(f"{archive}: corrupt archive: {error}") from None


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike, limits: Limits = Limits()) -> Path:
    """Unpack `archive` into a new folder `target`, atomically (temp folder, then rename)."""
    with atomic_path(target) as temporary:
        temporary.mkdir(parents=True)
        extract_into(archive, temporary, limits)
    return Path(target)
