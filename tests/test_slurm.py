"""profiles/slurm for real: the test DAG submitted through sbatch to a live one-node Slurm.

The cluster is started by `scripts/local-slurm.sh start` (CI: .ci/run).
Without it the test skips, unless SEGVOL_REQUIRE_SLURM=1 (CI), where a missing cluster is a failure.
Fine-tuning asks for 2 GPUs, so the profile submits it with `--gpus=2 --cpus-per-gpu=8` and the rule
launches it through torchrun with 2 ranks inside that one Slurm job (gloo, as the node has no real GPU);
the same overlay drives the local reference run, so both runs compute the same thing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from segvol.provenance import read_sidecar
from tests.test_workflow import REPO, assert_ok, snakemake

pytestmark = pytest.mark.slow

TARGET = "results/table2.csv"
# The rules the target needs; each must have run as its own Slurm job.
RULES = {"synthesize", "normalize", "pseudo", "pretrain", "finetune", "evaluate_cases", "table2"}
# Fine-tuning on 2 GPUs (DDP); fewer steps than config/test.yaml to keep CI time down.
# The test cluster advertises GPUs it does not have: jobs given GPUs run on the CPU (gpu_device).
DDP_OVERLAY = "gpu_device: cpu\npretrain:\n  steps: 1\nfinetune:\n  gpu: 2\n  steps: 2\n"


def _cluster_error() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch is not installed (scripts/local-slurm.sh start installs and starts a local cluster)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30, check=False)
    if "UP" not in ping.stdout:
        return f"slurmctld does not answer (scripts/local-slurm.sh start): {ping.stdout.strip()} {ping.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    error = _cluster_error()
    if error and os.environ.get("SEGVOL_REQUIRE_SLURM") == "1":
        pytest.fail(f"SEGVOL_REQUIRE_SLURM=1 but {error}")
    if error:
        pytest.skip(error)


def _run(work: Path, *extra: str) -> str:
    work.mkdir()
    (work / "ddp.yaml").write_text(DDP_OVERLAY, encoding="utf-8")
    args = [
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "test.yaml"),
        str(work / "ddp.yaml"),
    ]
    return assert_ok(snakemake(*args, *extra, TARGET, timeout=1500))


def _completed_jobs() -> dict[str, tuple[str, str]]:
    """Job id -> (partition, state) of every job the cluster finished, from its completion log."""
    listing = subprocess.run(
        ["sacct", "--completion", "--parsable2", "--noheader", "--format=JobID,Partition,State"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    return {
        job: (partition, state)
        for job, partition, state in (line.split("|") for line in listing.stdout.splitlines() if line.count("|") == 2)
    }


def test_table2_through_slurm_equals_the_local_run(cluster, tmp_path):
    # The local reference runs on one core (Slurm jobs get 8 CPUs each): the same bytes whatever the cores.
    local = tmp_path / "local"
    _run(local, "--cores", "1")
    slurm = tmp_path / "slurm"
    # Only what a site sets changes: no account (this cluster has no accounting) and the status command
    # that works without an accounting database; status checks start after 2 s instead of 40 s.
    output = _run(
        slurm,
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--slurm-no-account",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
    )

    check_jobs_went_through_slurm(slurm, output)
    check_same_results(local, slurm)


def check_jobs_went_through_slurm(slurm: Path, output: str = "") -> None:
    """Every job ran as a Slurm job (the plugin's per-job logs, the cluster's completion records); fine-tuning
    asked for 2 GPUs and ran as 2 torchrun ranks inside that one job."""
    logs = slurm / ".snakemake" / "slurm_logs"
    job_ids: dict[str, list[str]] = {}  # logs/rule_<rule>[/<wildcards>]/<job id>.log
    for path in logs.rglob("*.log"):
        job_ids.setdefault(path.relative_to(logs).parts[0].removeprefix("rule_"), []).append(path.stem)
    assert RULES <= set(job_ids), (sorted(job_ids), output[-3000:])
    completed = _completed_jobs()
    for rule in RULES:
        for job_id in job_ids[rule]:
            assert job_id in completed, (rule, job_id, completed)
            partition, state = completed[job_id]
            assert state == "COMPLETED", (rule, job_id, state)
            assert partition == ("gpu" if rule in {"pretrain", "finetune", "evaluate_cases"} else "cpu"), (
                rule,
                partition,
            )

    [finetune_job] = job_ids["finetune"]
    job = subprocess.run(
        ["scontrol", "show", "job", "-o", finetune_job], capture_output=True, text=True, timeout=60, check=False
    )
    assert "TresPerJob=gres:gpu:2" in job.stdout, job.stdout
    model = read_sidecar(slurm / "models/finetune/segvol/model.safetensors")
    assert (model["slurm_job_id"], model["world_size"], model["device"]) == (finetune_job, 2, "cpu")


def check_same_results(local: Path, slurm: Path) -> None:
    import pandas as pd

    assert read_sidecar(local / "models/finetune/segvol/model.safetensors")["slurm_job_id"] is None
    # Same models and numbers as the local run, to the last bit (only the timings differ).
    for name in ("models/pretrain/encoder.safetensors", "models/finetune/segvol/model.safetensors", TARGET):
        assert (slurm / name).read_bytes() == (local / name).read_bytes(), f"{name} differs from the local run"
    per_case = [pd.read_parquet(work / "results/table2_per_case.parquet") for work in (slurm, local)]
    timings = [column for column in per_case[0] if "seconds" in column]
    pd.testing.assert_frame_equal(*(frame.drop(columns=timings) for frame in per_case), check_exact=True)
