import os
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# What a run of the workflow in the clone makes (README command 1). Tests must neither depend on nor
# change them: README command 2 (the tests) must pass after command 1, and leave its outputs alone.
RUN_OUTPUTS = ("data", "results", "models", "logs", ".snakemake")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real CT cases); tests using it skip when it is absent."""
    if not (SHARED_DATA / "totalsegmentator").is_dir():
        pytest.skip("../shared/data/totalsegmentator is not available")
    return SHARED_DATA


def run_outputs_state(repo: Path = REPO) -> dict[str, tuple]:
    """Every path under the clone's run-output folders with its kind, size and modification time
    (symbolic links not followed): a created, removed or rewritten file changes it."""
    state = {}
    for name in RUN_OUTPUTS:
        top = repo / name
        if not (top.exists() or top.is_symlink()):
            continue
        paths = [top]
        if top.is_dir() and not top.is_symlink():
            for folder, folders, files in os.walk(top):
                paths += [Path(folder) / entry for entry in (*folders, *files)]
        for path in paths:
            info = path.lstat()
            kind = "dir" if stat.S_ISDIR(info.st_mode) else "file"
            state[path.relative_to(repo).as_posix()] = (
                kind,
                None if kind == "dir" else info.st_size,
                None if kind == "dir" else info.st_mtime_ns,
            )
    return state


def describe_changes(before: dict, after: dict, limit: int = 8) -> str:
    created = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p] and before[p][0] == "file")
    parts = [
        f"{what}: {', '.join(paths[:limit])}{' ...' if len(paths) > limit else ''}"
        for what, paths in (("created", created), ("removed", removed), ("changed", changed))
        if paths
    ]
    return "; ".join(parts)


@pytest.fixture(scope="module", autouse=True)
def leaves_the_clone_as_it_found_it(request):
    """Each test module leaves the clone's data/, results/, models/, logs/ and .snakemake/ exactly as
    it found them (an error at the module's last test names the paths otherwise)."""
    before = run_outputs_state()
    yield
    after = run_outputs_state()
    if after != before:
        pytest.fail(
            f"{request.module.__name__} changed the clone's run outputs ({describe_changes(before, after)}); "
            "tests must work in temporary folders (tests/test_workflow.py: snakemake() runs in a copy)",
            pytrace=False,
        )


def work_tree_status(repo: Path = REPO) -> dict[str, tuple] | None:
    """Every file git would report in `repo` (changed tracked files, new files it does not ignore)
    with its size and modification time; None when `repo` is not a git checkout."""
    import subprocess

    try:
        listing = subprocess.run(
            ["git", "status", "--porcelain=v1", "-z", "--untracked-files=all"],
            cwd=repo,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    state = {}
    for entry in listing.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if len(entry) > 3 and entry[2] == " ":  # "XY path" (a rename's source follows as its own entry)
            path = repo / entry[3:]
            try:
                info = path.lstat()
                state[entry[3:]] = (entry[:2], info.st_size, info.st_mtime_ns)
            except OSError:
                state[entry[3:]] = (entry[:2], None, None)
    return state


@pytest.fixture(scope="session", autouse=True)
def leaves_the_work_tree_as_it_found_it():
    """The whole test session adds, changes or removes no file of the clone that git sees (ignored
    files, such as .venv/ and __pycache__/, aside; the run outputs are guarded per module above)."""
    before = work_tree_status()
    yield
    after = work_tree_status()
    if before is not None and after is not None and after != before:
        differing = sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))
        shown = ", ".join(
            f"{path} ({after[path][0].strip() if path in after else 'restored or removed'})" for path in differing[:8]
        )
        pytest.fail(
            f"the tests changed the clone's files: {shown}{' ...' if len(differing) > 8 else ''}; "
            "tests must write only to temporary folders",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A `tiny` SegVol with random weights (seed 0) as our .safetensors: `segvol predict --checkpoint` on it
    exercises the whole command without trained weights (the segmentation itself is meaningless)."""
    import torch

    from segvol.model import build_model, model_config
    from segvol.model.checkpoint import save

    path = tmp_path_factory.mktemp("weights") / "tiny-random.safetensors"
    torch.manual_seed(0)
    save(build_model(model_config("tiny")), path)
    return path
