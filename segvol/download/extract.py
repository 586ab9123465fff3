"""Safe archive extraction (zip, tar, tar.gz/bz2/xz) that can never write outside its folder.

Why our own writer instead of `zipfile.extract` / `tarfile.extractall(filter="data")`:
- Links are never created on disk. A link member (zip symlink, tar symlink or hard link) that
  points at a regular file of the same archive is unpacked as a copy of that file; any other link
  is refused. Link targets are resolved inside the archive's own member list, one component at a
  time, and a target that passes through another link is refused, so chains such as
  `l0 -> .`, `l1 -> l0/..`, `l2 -> l1/..` cannot be used to climb out. (Checking link text
  lexically and then letting the OS follow the links on disk is exactly what let such a chain
  overwrite a file next to the destination; the stdlib `data` filter has had bypasses of the same
  kind, e.g. CVE-2025-4517 on the Python 3.11 we run.)
- Every output is opened relative to a descriptor of its parent folder with `O_NOFOLLOW` and
  `O_EXCL`, walking down from the destination one folder at a time: a path through a link, or an
  existing file (for instance a hard link a previous source placed there), is refused at the
  moment of writing, whatever is on disk.
- Archive bombs are refused by member count, total unpacked size, and the compression ratio
  (unpacked / packed bytes) per zip member and for the whole archive, judged once the unpacked
  bytes pass `ratio_floor_bytes` (small, very sparse label maps stay fine). A zip is checked
  whole, from its central directory, before the first byte is written; a tar has no index, so it
  is checked member by member in one streaming pass (listing a .tar.gz first would decompress it
  twice), each member before it is written. While writing, the bytes actually produced are
  counted against the declared sizes and the total.

`extract_archive` unpacks into a temporary sibling and renames it into place, so a refused or
failed archive leaves nothing behind; `extract_into` writes into an existing (fresh) folder.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from segvol.io.atomic import atomic_path

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CHUNK_BYTES = 1 << 20
MAX_LINK_HOPS = 40


@dataclass(frozen=True)
class Limits:
    max_members: int = 1_000_000
    max_total_bytes: int = 4 << 40  # 4 TiB: far above any dataset of the paper
    # Unpacked / packed bytes. Archives of the paper's datasets hold .nii.gz or .npy volumes
    # (ratio below 10); a deflate bomb reaches ~1000, bzip2/xz far more.
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 64 << 20


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
    clean = posixpath.normpath(unified)
    if clean in (".", ""):
        raise ValueError(f"{archive}: member without a name refused: {name!r}")
    return clean


# --------------------------------------------------------------------------- member plan


@dataclass
class _Plan:
    """What an archive writes: folders, regular files and links (as copies), checked as added."""

    archive: Path
    folders: list[str] = field(default_factory=list)
    files: dict[str, object] = field(default_factory=dict)  # clean name -> the archive's member handle
    links: dict[str, tuple[str, bool]] = field(default_factory=dict)  # clean name -> (target, is hard link)
    _under: dict[str, str] = field(default_factory=dict)  # folder path -> a member below it

    def add(self, name: str, member: object = None, link: tuple[str, bool] | None = None) -> None:
        """Register a folder (no member, no link), file or link; ValueError when a member would
        lie under a link or a file (it would be written through it), in either order."""
        parts = name.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in self.links or prefix in self.files:
                kind = "link" if prefix in self.links else "file"
                raise ValueError(f"{self.archive}: member {name!r} lies under the {kind} {prefix!r}; refused")
        if (member is not None or link is not None) and name in self._under:
            kind = "link" if link is not None else "file"
            raise ValueError(f"{self.archive}: member {self._under[name]!r} lies under the {kind} {name!r}; refused")
        for depth in range(1, len(parts)):
            self._under.setdefault("/".join(parts[:depth]), name)
        if link is not None:
            self.links[name] = link
        elif member is not None:
            self.files[name] = member
        else:
            self.folders.append(name)

    def copies(self) -> dict[str, str]:
        """Each link -> the regular file member it stands for, or ValueError."""
        return {name: self._resolve(name) for name in self.links}

    def _resolve(self, link: str) -> str:
        seen = []
        current = link
        while current in self.links:
            if len(seen) > MAX_LINK_HOPS or current in seen:
                raise ValueError(f"{self.archive}: link loop at {link!r} refused")
            seen.append(current)
            target, hard = self.links[current]
            current = self._walk(current, target, hard)
        if current not in self.files:
            raise ValueError(
                f"{self.archive}: link {link!r} -> {self.links[link][0]!r} does not lead to a file "
                f"of the archive (links are unpacked as copies of files only); refused"
            )
        return current

    def _walk(self, link: str, target: str, hard: bool) -> str:
        unified = target.replace("\\", "/")
        if not unified or unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
            raise ValueError(f"{self.archive}: link {link!r} -> absolute path {target!r} refused")
        # Hard-link targets are archive-relative; symlink targets are relative to the link's folder.
        parts = [] if hard else [p for p in posixpath.dirname(link).split("/") if p]
        for part in unified.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise ValueError(f"{self.archive}: link {link!r} -> {target!r} escapes the target folder; refused")
                parts.pop()
                continue
            prefix = "/".join(parts)
            if prefix in self.links:
                raise ValueError(
                    f"{self.archive}: link {link!r} -> {target!r} passes through the link {prefix!r}; refused"
                )
            parts.append(part)
        return "/".join(parts)


def _check_totals(archive: Path, count: int, total: int, limits: Limits) -> None:
    if count > limits.max_members:
        raise ValueError(f"{archive}: {count} members exceed the limit of {limits.max_members}")
    if total > limits.max_total_bytes:
        raise ValueError(f"{archive}: {total} unpacked bytes exceed the limit of {limits.max_total_bytes}")
    packed = max(1, archive.stat().st_size)
    if total > limits.ratio_floor_bytes and total / packed > limits.max_ratio:
        raise ValueError(
            f"{archive}: unpacks {packed} bytes into {total} (ratio {total / packed:.0f}, limit "
            f"{limits.max_ratio:g}): refused as an archive bomb (raise download.max_extract_ratio if it is genuine)"
        )


# --------------------------------------------------------------------------- writing


class _Folder:
    """Writes below one folder through directory descriptors, never following a link."""

    def __init__(self, root: Path, archive: Path, limits: Limits):
        self.root = root
        self.archive = archive
        self.limits = limits
        self.written = 0
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        os.close(self.root_fd)

    def _parent(self, name: str) -> tuple[int, str]:
        """A descriptor of the folder that will hold `name` (created as needed), and the last part."""
        parts = name.split("/")
        fd = os.dup(self.root_fd)
        try:
            for part in parts[:-1]:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as error:  # ELOOP (a link) or ENOTDIR (a file)
                    raise ValueError(
                        f"{self.archive}: {name!r} would be written through {part!r}, which is not a "
                        f"plain folder ({error.strerror}); refused"
                    ) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def folder(self, name: str) -> None:
        fd, _ = self._parent(name + "/-")  # the last part is never created
        os.close(fd)

    def write(self, name: str, source: BinaryIO, declared: int) -> None:
        fd, last = self._parent(name)
        try:
            try:
                out = os.open(
                    last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd
                )
            except FileExistsError:
                raise ValueError(
                    f"{self.archive}: {name!r} already exists (duplicate member or an earlier file); refused"
                ) from None
        finally:
            os.close(fd)
        produced = 0
        with os.fdopen(out, "wb") as sink:
            while block := source.read(CHUNK_BYTES):
                produced += len(block)
                self.written += len(block)
                if produced > declared or self.written > self.limits.max_total_bytes:
                    raise ValueError(f"{self.archive}: {name!r} unpacks to more bytes than declared; refused")
                sink.write(block)

    def open_file(self, name: str) -> BinaryIO:
        fd, last = self._parent(name)
        try:
            handle = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        return os.fdopen(handle, "rb")


def _write_zip(plan: _Plan, dest: Path, limits: Limits, bundle: zipfile.ZipFile) -> None:
    copies = plan.copies()
    folder = _Folder(dest, plan.archive, limits)
    try:
        for name in plan.folders:
            folder.folder(name)
        for name, info in plan.files.items():
            with bundle.open(info) as source:
                folder.write(name, source, info.file_size)
        for name, target in copies.items():
            with folder.open_file(target) as source:
                folder.write(name, source, plan.files[target].file_size)
    finally:
        folder.close()


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _extract_zip(archive: Path, dest: Path, limits: Limits) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        plan = _Plan(archive)
        total = 0
        for info in infos:
            name = _safe_name(archive, info.filename)
            if _zip_is_symlink(info):
                if info.file_size > 4096:
                    raise ValueError(f"{archive}: link {name!r} with a {info.file_size}-byte target refused")
                plan.add(name, link=(bundle.read(info).decode("utf-8", "replace"), False))
            elif info.is_dir():
                plan.add(name)
            else:
                plan.add(name, info)
                total += info.file_size
                ratio = info.file_size / max(1, info.compress_size)
                if info.file_size > limits.ratio_floor_bytes and ratio > limits.max_ratio:
                    raise ValueError(
                        f"{archive}: member {name!r} unpacks {info.compress_size} bytes into {info.file_size} "
                        f"(ratio {ratio:.0f}, limit {limits.max_ratio:g}): refused as an archive bomb "
                        f"(raise download.max_extract_ratio if it is genuine)"
                    )
        copies_total = sum(plan.files[t].file_size for t in plan.copies().values())
        _check_totals(archive, len(infos), total + copies_total, limits)
        _write_zip(plan, dest, limits, bundle)


def _extract_tar(archive: Path, dest: Path, limits: Limits) -> None:
    """One pass: a tar has no index, and listing a .tar.gz first would decompress it twice. Each
    member is checked before it is written (names, links, parents, running totals and ratio);
    a refusal part-way leaves what was written in `dest`, which the callers discard."""
    plan = _Plan(archive)
    folder = _Folder(dest, archive, limits)
    count = total = 0
    try:
        with tarfile.open(archive, "r:*") as bundle:
            for member in bundle:
                count += 1
                total += member.size if member.isfile() else 0
                _check_totals(archive, count, total, limits)
                name = _safe_name(archive, member.name)
                if member.issym() or member.islnk():
                    plan.add(name, link=(member.linkname, member.islnk()))
                elif member.isdir():
                    plan.add(name)
                    folder.folder(name)
                elif member.isfile():
                    plan.add(name, member)
                    with bundle.extractfile(member) as source:
                        folder.write(name, source, member.size)
                else:
                    raise ValueError(f"{archive}: special file {member.name!r} (device/fifo) refused")
            copies = plan.copies()
            _check_totals(archive, count, total + sum(plan.files[t].size for t in copies.values()), limits)
            for name, target in copies.items():
                with folder.open_file(target) as source:
                    folder.write(name, source, plan.files[target].size)
    finally:
        folder.close()


def extract_into(archive: str | os.PathLike, dest: str | os.PathLike, limits: Limits = Limits()) -> None:
    """Unpack `archive` into the folder `dest` after checking every member (see the module notes).

    A refused archive raises ValueError; files written before a failure stay in `dest`, so
    callers write into a temporary folder (`extract_archive`, the download CLI).
    """
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
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise ValueError(f"{archive}: corrupt archive: {error}") from None
    except (NotImplementedError, RuntimeError) as error:  # zipfile: unknown compression, encryption
        raise ValueError(f"{archive}: cannot unpack: {error}") from None


def check_integrity(archive: str | os.PathLike, name: str | None = None) -> None:
    """Read every member of a zip (CRC-32) or tar (compressed stream checksum, full listing), or
    a whole .gz file; ValueError naming the archive when it is truncated or corrupt. `name` gives
    the type when the path has another suffix (a `.partial` download)."""
    archive = Path(archive)
    lower = (name or archive.name).lower()
    try:
        if lower.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle:
                bad = bundle.testzip()
            if bad is not None:
                raise ValueError(f"{archive}: corrupt archive: CRC mismatch in member {bad!r}")
        elif lower.endswith(ARCHIVE_SUFFIXES):
            with tarfile.open(archive, "r:*") as bundle:
                for member in bundle:
                    if member.isfile():
                        with bundle.extractfile(member) as source:
                            while source.read(CHUNK_BYTES):
                                pass
                # Reading past the last member checks the compressed stream's own trailer.
                shutil.copyfileobj(bundle.fileobj, _Discard())
        elif lower.endswith(".gz"):
            import gzip

            with gzip.open(archive, "rb") as source:
                while source.read(CHUNK_BYTES):
                    pass
        else:
            raise ValueError(f"{archive}: no integrity check for this file type")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ValueError(f"{archive}: corrupt or truncated archive: {error}") from None


def can_check_integrity(path: str | os.PathLike) -> bool:
    return is_archive(path) or str(path).lower().endswith(".gz")


class _Discard:
    def write(self, data) -> int:
        return len(data)


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike, limits: Limits = Limits()) -> Path:
    """Unpack `archive` into a new folder `target`, atomically (temp folder, then rename)."""
    with atomic_path(target) as temporary:
        temporary.mkdir(parents=True)
        extract_into(archive, temporary, limits)
    return Path(target)
