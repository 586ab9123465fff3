"""Write-then-rename, so that a failed job never leaves a half-written file or store behind.

Safety rules (a user's files are never at risk from an output path):
- a file never replaces a directory and a directory never replaces a file: a mistyped output
  path that names an existing folder (or file) is refused with one line, nothing changed;
- the only tree ever removed recursively is our own temporary sibling, or a previous directory
  output (e.g. a Zarr store) that the new one of the same kind replaces;
- written files get the ordinary permissions of a new file (``0666 & ~umask``), not the 0600
  that some writers (safetensors, ``tempfile.mkstemp``) give their temporaries.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kind(path: Path) -> str:
    return "folder" if path.is_dir() and not path.is_symlink() else "file"


def temporary_sibling(final: Path) -> Path:
    """The hidden temporary name used for ``final`` (keeps ".nii.gz"/suffix for format detection)."""
    name = final.name
    if name.endswith(".nii.gz"):
        return final.with_name(f".{name[:-7]}.tmp-{os.getpid()}.nii.gz")
    if final.suffix:
        return final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    return final.with_name(f".{name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final`, on error it is removed.

    Works for files and directories (e.g. Zarr stores). The suffix is kept so that format
    detection by extension (".nii.gz", ".zarr") still works on the temporary path. Raises
    ValueError (nothing changed) when `final` exists as the other kind (folder vs file).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(final)
    _remove(temporary)
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {final}")
        if final.exists() or final.is_symlink():
            new, old = _kind(temporary), _kind(final)
            if new != old:
                raise ValueError(f"{final}: is an existing {old}; refusing to replace it with a {new}")
        if temporary.is_file():
            os.chmod(temporary, 0o666 & ~_umask())
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)  # a previous store of ours (same kind, see above)
        os.replace(temporary, final)
    except BaseException:
        _remove(temporary)
        raise
