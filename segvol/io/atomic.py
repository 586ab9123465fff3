"""Write-then-rename, so that a failed job never leaves a half-written file or store behind."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final`, on error it is removed.

    Works for files and directories (e.g. Zarr stores). The suffix is kept so that format
    detection by extension (".nii.gz", ".zarr") still works on the temporary path.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    name = final.name
    temporary = final.with_name(f".{name}.tmp-{os.getpid()}")
    if name.endswith(".nii.gz"):
        temporary = final.with_name(f".{name[:-7]}.tmp-{os.getpid()}.nii.gz")
    elif final.suffix:
        temporary = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    _remove(temporary)
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {final}")
        _remove(final)
        os.replace(temporary, final)
    except BaseException:
        _remove(temporary)
        raise
