"""The Snakemake workflow as a whole: lint, dry-runs of every config/profile, one tiny end-to-end run."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import RUN_OUTPUTS

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@functools.lru_cache(maxsize=1)
def sources_copy() -> Path:
    """A temporary copy of the repository's sources, made once per test session: dry runs plan the
    workflow there, so they never see (or leave behind) outputs that a run in the clone made."""
    target = Path(tempfile.mkdtemp(prefix="segvol-sources-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    return copy_sources(target)


def copy_sources(target: Path) -> Path:
    """Copy the repository's tracked and new (not ignored) files, without `RUN_OUTPUTS`, to `target`."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if listing.returncode == 0:
        names = [name for name in listing.stdout.decode().split("\0") if name]
    else:  # not a git checkout: every file outside the run outputs and the environment
        skip = {*RUN_OUTPUTS, ".git", ".venv", "__pycache__", ".pytest_cache"}
        names = []
        for folder, folders, files in os.walk(REPO):
            folders[:] = [name for name in folders if name not in skip]
            names += [(Path(folder) / name).relative_to(REPO).as_posix() for name in files]
    for name in names:
        if name.split("/")[0] in RUN_OUTPUTS or not (REPO / name).is_file():
            continue  # deleted but not yet committed, or a run output that is tracked by mistake
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    return target


def snakemake(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`snakemake *args` in `cwd`, by default in `sources_copy()` (never in the clone itself)."""
    cwd = sources_copy() if cwd is None else cwd
    env = dict(os.environ)
    # rules call the `segvol` console script of this environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The first "Job stats" table of a (dry) run: rule -> number of jobs."""
    import re

    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def assert_ok(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


STAGE_RULES = ["synthesize", "normalize", "pseudo", "pretrain", "finetune", "evaluate_cases", "table2"]
EVALUATION_RULES = [
    "table2",
    "table3",
    "figure2",
    "scaling_cases",
    "figure3a",
    "prompt_cases",
    "figure3b",
    "figure5",
    "table6",
    "rotation",
    "mri",
    "interactive",
    "table2_statistics",
    "gallery",
    "figure4",
    "overlap_audit",
    "taskspecific_train",
    "taskspecific_cases",
    "figure9",
    "table7",
    "meshes",
]


def test_lint_is_clean():
    output = assert_ok(snakemake("--lint"))
    assert "Lints for" not in output


def test_dry_run_lists_every_stage():
    output = assert_ok(snakemake("-n", "results/table2.csv"))
    for rule in STAGE_RULES:
        assert f"rule {rule}" in output or f"\n{rule} " in output, f"{rule} missing from the DAG"


def test_slurm_profile_dry_run_asks_gpus_for_training():
    output = assert_ok(
        snakemake("-n", "results/table2.csv", "--profile", "profiles/slurm", "--configfile", "config/paper.yaml")
    )
    assert "finetune" in output and "pretrain" in output


def test_slurm_profile_dry_run_on_the_demo():
    assert_ok(snakemake("-n", "--profile", "profiles/slurm", "results/table2.csv"))


def test_paper_dry_run_lists_downloads_for_every_dataset():
    output = assert_ok(snakemake("-n", "results/table2.csv", "--configfile", "config/paper.yaml"))
    assert "download" in output and "normalize" in output


def test_paper_dry_run_of_the_default_target_lists_every_table_and_figure():
    counts = job_counts(assert_ok(snakemake("-n", "--configfile", "config/paper.yaml")))
    for rule in EVALUATION_RULES:
        assert counts.get(rule, 0) >= 1, f"{rule} missing from the paper DAG"
    # Fig 3a: models fine-tuned on the first 1, 2 and 8 datasets and on all 25, each scored on BTCV
    assert counts["finetune"] == counts["scaling_cases"] == 4
    assert counts["evaluate_cases"] == 3 and counts["pseudo"] == 25
    # Appendix C: nnU-Net, SwinUNETR and 3D UX-Net on BTCV and four MSD tasks
    assert counts["taskspecific_train"] == 15 and counts["taskspecific_cases"] == 5


def test_bad_config_is_rejected():
    result = snakemake("-n", "--config", "finetune={'stpes': 3}")
    assert result.returncode != 0


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path):
    """The whole DAG on the smallest config, in a scratch directory; a second run has nothing to do.

    That a second run elsewhere, with another core count, gives the same bytes is checked by
    tests/test_slurm.py (one core locally against jobs on a cluster), so the DAG is not run twice here.
    """
    work = tmp_path / "work"
    work.mkdir()
    for name in ("config",):
        shutil.copytree(REPO / name, work / name)
    args = [
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config" / "config.yaml"),
        str(work / "config" / "test.yaml"),
        "--cores",
        "2",
    ]
    assert_ok(snakemake(*args, "results/table2.csv", "results/table3.csv", timeout=1500))
    import pandas as pd

    table2 = pd.read_csv(work / "results" / "table2.csv")
    assert "SegVol" in table2.columns
    assert {"dataset", "category", "SegVol"} <= set(table2.columns)
    averages = table2[table2["category"] == "Average"]
    assert sorted(averages["dataset"]) == ["ext_lesions", "ext_organs", "ext_vessels"]
    assert table2["SegVol"].between(0, 1).all()
    # It learns: an easy organ with a box prompt scores far above chance (an empty mask scores 0).
    liver = table2[(table2["dataset"] == "ext_organs") & (table2["category"] == "liver")]
    assert float(liver["SegVol"].iloc[0]) >= 0.3, table2.to_string()
    assert (work / "results" / "table2_per_case.parquet").is_file()
    table3 = pd.read_csv(work / "results" / "table3.csv")
    assert len(table3) == 3
    again = assert_ok(snakemake(*args, "-n", "results/table2.csv", "results/table3.csv"))
    assert "Nothing to be done" in again

    # Every other table and figure (the default target), then one of them forced to rerun alone.
    assert_ok(snakemake(*args, timeout=1500))
    results = work / "results"
    for name in (
        "fig3a_scaling.csv",
        "fig3b_prompts.csv",
        "fig5_identification.csv",
        "table6.csv",
        "rotation.csv",
        "mri.csv",
        "interactive.csv",
        "table2_statistics.csv",
        "fig9_taskspecific.csv",
        "table7.csv",
    ):
        assert len(pd.read_csv(results / name)) > 0, name
    # The tiny config's label spaces hold no category inside another: Fig 4 then says so (an empty table
    # and a figure with the reason) instead of guessing; its logic is tested in test_evaluate_ablations.
    assert {"prompt", "category", "dice"} <= set(pd.read_csv(results / "fig4_semantic.csv").columns)
    pngs = sorted((results / "figures").glob("*.png"))
    assert len(pngs) >= 6 and all(png.read_bytes()[:4] == b"\x89PNG" for png in pngs)
    forced = job_counts(assert_ok(snakemake(*args, "-n", "--forcerun", "table6", "results/table6.csv")))
    # `all` runs nothing and `provenance` only re-collects the sidecars: table6 is the one rule recomputed.
    assert {rule for rule in forced if rule not in {"all", "provenance"}} == {"table6"}
    assert_ok(snakemake(*args, "--report", str(results / "report.zip")))
    assert (results / "report.zip").stat().st_size > 10_000
