"""Remove the temporary siblings (`.<name>.tmp-<pid>...`) that killed jobs left next to an output.

`segvol.io.atomic.atomic_path` writes `<out>` as a hidden sibling named after the writing process
and removes it on any Python error, but a job killed by SIGKILL, the OOM killer or a power cut
leaves it behind, and a dataset-sized raw folder is a lot of disk. A sibling is stale when its
PID is not a live process here AND it has not been modified for `min_age_s`: the age guard keeps
the temporary of a job that runs on another machine of a shared filesystem (where its PID means
nothing) as long as that job is still writing to it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _temporary_pattern(name: str) -> re.Pattern:
    """Every name atomic_path gives a temporary of `name` (the suffix rules of segvol.io.atomic)."""
    forms = [re.escape(f".{name}.tmp-") + r"(\d+)"]
    if name.endswith(".nii.gz"):
        forms.append(re.escape(f".{name[:-7]}.tmp-") + r"(\d+)" + re.escape(".nii.gz"))
    stem, dot, suffix = name.rpartition(".")
    if dot and stem:
        forms.append(re.escape(f".{stem}.tmp-") + r"(\d+)" + re.escape(f".{suffix}"))
    return re.compile("^(?:" + "|".join(forms) + ")$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(final: str | os.PathLike, min_age_s: float = 3600.0) -> list[Path]:
    """Delete stale temporaries of the output `final`; return what was removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = _temporary_pattern(final.name)
    removed = []
    now = time.time()
    for sibling in final.parent.iterdir():
        match = pattern.match(sibling.name)
        if not match:
            continue
        pid = int(next(group for group in match.groups() if group is not None))
        if pid == os.getpid() or _alive(pid):
            continue
        if now - sibling.lstat().st_mtime < min_age_s:
            continue
        log.info("removing %s, left by process %d that no longer runs", sibling, pid)
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling)
        else:
            sibling.unlink()
        removed.append(sibling)
    return removed
