"""Deployable environments: requirements.lock, the bounds in pyproject.toml, envs/segvol.yaml.

CI's environment is made by setup.sh from the lock, so there (SEGVOL_STRICT_ENV=1, set by .ci/run) it
must equal the lock exactly and `pip check` must be clean; a developer's environment may hold more.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
STRICT = os.environ.get("SEGVOL_STRICT_ENV") == "1"
# What a venv has besides its packages, and the project itself.
NOT_LOCKED = {"pip", "setuptools", "wheel", "segvol"}
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*\\?\s*$")


def locked() -> dict[str, tuple[str, list[str]]]:
    """Canonical name -> (version, hashes) of every entry of requirements.lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if match := _ENTRY.match(line):
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(2), [])
        elif current and (hashed := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[current][1].append(hashed.group(1))
    return entries


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [Requirement(text) for text in [*project["dependencies"], *extras["test"], *extras["slurm"]]]


def test_lock_pins_every_package_with_a_hash():
    entries = locked()
    assert len(entries) > 50, "requirements.lock looks truncated"
    unhashed = sorted(name for name, (_, hashes) in entries.items() if not hashes)
    assert not unhashed, f"entries without --hash: {unhashed}"
    assert entries["torch"][0].startswith("2."), entries["torch"]


def test_lock_lists_every_declared_dependency_within_its_bounds():
    entries = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{requirement} is declared but not locked: run bash scripts/lock.sh"
        version = entries[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"locked {name}=={version} breaks {requirement}"
        )


def test_declared_dependencies_have_an_upper_bound_on_the_major_version():
    open_ended = {"pyarrow", "pillow", "regex"}  # calendar-like majors; the lock is what is tested
    for requirement in declared():
        if canonicalize_name(requirement.name) in open_ended:
            continue
        assert any(spec.operator == "<" for spec in requirement.specifier), f"{requirement}: no upper bound"


def installed_distributions() -> dict[str, str]:
    """Canonical name -> version of every package installed in this environment's site-packages.

    Not `metadata.distributions()` alone: that walks sys.path, and once something has imported setuptools
    its vendored packages' metadata (setuptools/_vendor/*.dist-info, other versions) lie on it too."""
    found: dict[str, str] = {}
    for distribution in metadata.distributions(path=site.getsitepackages()):
        found.setdefault(canonicalize_name(distribution.metadata["Name"]), distribution.version)
    return found


def test_this_environment_is_the_lock():
    installed = installed_distributions()
    entries = locked()
    # The local label (+cpu, +cu128) is the build of the same release (setup.sh's TORCH_SPEC).
    wrong = {
        name: (version, installed.get(name))
        for name, (version, _) in entries.items()
        if installed.get(name) is None or Version(installed[name]).public != Version(version).public
    }
    assert not wrong, f"locked version -> installed: {wrong} (run bash setup.sh)"
    extra = sorted(set(installed) - set(entries) - NOT_LOCKED)
    if STRICT:
        assert not extra, f"installed but not in requirements.lock: {extra}"


def test_what_counts_as_installed_does_not_change_when_setuptools_is_imported():
    """tests/test_layout.py imports setuptools, which puts its vendored packages on sys.path: the lock check
    must see the same environment before and after (a fresh process, so that nothing imported it yet)."""
    script = (
        "from tests.test_envs import installed_distributions as installed; before = installed(); "
        "import setuptools.config.pyprojecttoml; after = installed(); "
        "assert before == after, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) "
        "if before.get(k) != after.get(k)}"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_pip_check_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300, check=False
    )
    problems = [
        line
        for line in result.stdout.splitlines()
        if line.strip()
        and "No broken requirements" not in line
        and not line.endswith("requires torchvision, which is not installed.")
    ]  # see scripts/lock.sh
    if not STRICT:  # a developer's extra packages are theirs to fix; the locked ones must be consistent
        names = set(locked())
        problems = [line for line in problems if canonicalize_name(line.split()[0]) in names]
    assert not problems, "\n".join(problems)


def test_conda_environment_lists_python_and_the_package():
    spec = yaml.safe_load((REPO / "envs" / "segvol.yaml").read_text(encoding="utf-8"))
    dependencies = spec["dependencies"]
    assert "python=3.11" in dependencies and "pip" in dependencies
    pip_section = next(item["pip"] for item in dependencies if isinstance(item, dict))
    assert "-e ../.." in pip_section


@pytest.mark.slow
def test_conda_pip_section_installs_segvol_into_a_fresh_env_that_runs_a_rule(tmp_path):
    """The pip section of envs/segvol.yaml, installed the way conda does it for Snakemake run from the
    repository (pip started in <repo>/.snakemake/conda/, where the copy of the file lies), into a fresh
    venv that sees this environment's packages (offline: `--no-index`, so an unmet dependency fails);
    then one rule runs with that venv alone."""
    workdir = tmp_path / "work"
    shutil_copy_config(workdir)
    conda_dir = REPO / ".snakemake" / "conda"
    made = [folder for folder in (conda_dir.parent, conda_dir) if not folder.exists()]  # removed again below
    conda_dir.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((REPO / "envs" / "segvol.yaml").read_text(encoding="utf-8"))
    pip_section = next(item["pip"] for item in spec["dependencies"] if isinstance(item, dict))
    requirements = conda_dir / f"test-envs-{os.getpid()}.requirements.txt"
    requirements.write_text("\n".join(pip_section) + "\n", encoding="utf-8")
    try:
        _install_and_run(tmp_path, conda_dir, requirements, workdir)
    finally:
        requirements.unlink()
        for folder in reversed(made):  # the test leaves the clone's .snakemake/ as it found it
            shutil.rmtree(folder, ignore_errors=True)


def _install_and_run(tmp_path: Path, conda_dir: Path, requirements: Path, workdir: Path) -> None:

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    site = next(env.glob("lib/python3*/site-packages"))
    parent_site = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "parent.pth").write_text(f"{parent_site}\n", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    clean["PATH"] = f"{env / 'bin'}{os.pathsep}{clean.get('PATH', '')}"
    python = str(env / "bin" / "python")
    # Offline, the dependencies come from the parent environment; --no-deps because the resolver would
    # also want torchvision (via nnU-Net's network library and timm), which the lock leaves out
    # (scripts/lock.sh). `pip check` below still proves that segvol's own requirements are met.
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-r",
            requirements.name,
        ],
        cwd=conda_dir,
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run(
        [python, "-c", "import segvol; print(segvol.__file__)"],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert Path(where) == REPO / "segvol" / "__init__.py"
    assert (env / "bin" / "segvol").is_file()
    check = subprocess.run(
        [python, "-m", "pip", "check"], env=clean, capture_output=True, text=True, timeout=300, check=False
    )
    segvol_problems = [line for line in check.stdout.splitlines() if line.startswith("segvol ")]
    assert not segvol_problems, segvol_problems

    run = subprocess.run(
        [
            python,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            "config/config.yaml",
            "config/test.yaml",
            "--cores",
            "1",
            "data/raw/abdomen_a",
        ],
        cwd=workdir,
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert (workdir / "data" / "raw" / "abdomen_a" / "dataset.json").is_file()


def shutil_copy_config(workdir: Path) -> None:
    import shutil

    shutil.copytree(REPO / "config", workdir / "config")
