"""The paper configuration at smoke scale (config/paper_smoke.yaml over config/paper.yaml), end to end on CPU:
the `base` model with the CLIP text tower trains 2 steps and scores one external case through the real rules.

Measured on 2 busy cores (load ~16): 34 min, peak RSS 9.8 GB (finetune), 3.5 GB (pretrain), 1.4 GB
(evaluate_cases); the jobs used 235 CPU seconds in all."""

from __future__ import annotations

import pandas as pd
import pytest

from segvol.provenance import read_sidecar, runtime_table
from tests.test_workflow import REPO, assert_ok, job_counts, snakemake

pytestmark = pytest.mark.slow

BASE_PARAMETERS = 180_890_064  # README / Table 6: the released SegVol
RULES = ["synthesize", "normalize", "pseudo", "pretrain", "finetune", "evaluate_cases", "overlap_audit", "table2"]


def test_paper_smoke_runs_the_base_model_through_the_paper_rules(tmp_path):
    args = [
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config" / "paper.yaml"),
        str(REPO / "config" / "paper_smoke.yaml"),
    ]
    planned = job_counts(assert_ok(snakemake(*args, "-n", "results/table2.csv")))
    assert set(planned) - {"total"} == set(RULES), planned
    assert_ok(snakemake(*args, "--cores", "2", "results/table2.csv", timeout=2700))

    from segvol.model import checkpoint

    model_file = tmp_path / "models/finetune/segvol/model.safetensors"
    model = checkpoint.load(model_file)
    assert model.config.text_encoder == "clip"
    assert sum(parameter.numel() for parameter in model.parameters()) == BASE_PARAMETERS
    del model

    table2 = pd.read_csv(tmp_path / "results/table2.csv")
    segvol = table2[(table2["dataset"] == "smoke_external") & (table2["category"] != "Average")]["SegVol"]
    assert len(segvol) >= 1 and segvol.between(0, 1).all()
    cases = pd.read_parquet(tmp_path / "results/cases/smoke_external.parquet")
    assert cases["case"].nunique() == 1

    made = read_sidecar(model_file)
    assert made["device"] == "cpu" and any(i["path"].endswith("encoder.safetensors") for i in made["inputs"])
    runtime = runtime_table(tmp_path / "benchmarks" / "runs")
    assert set(runtime["rule"]) == set(RULES)
    assert (runtime["max_rss_mb"] > 0).all()
