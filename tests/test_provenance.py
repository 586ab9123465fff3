"""Provenance sidecars (`<output>.provenance.json`) and the report tables built from them."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pandas as pd
import pytest

from segvol import provenance
from tests.test_workflow import REPO


@pytest.fixture(autouse=True)
def fresh_context(monkeypatch):
    monkeypatch.setattr(provenance, "_context", {"command": None, "device": None})
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_sidecar_records_code_packages_device_and_input_hashes(tmp_path):
    from segvol.device import resolve_device

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"weights v1")
    out = tmp_path / "table.csv"
    provenance.set_command(["segvol", "evaluate", "--checkpoint", str(weights), "--out", str(out), "--seed", "3"])
    resolve_device("cpu")
    out.write_text("a,b\n1,2\n", encoding="utf-8")
    sidecar = provenance.write_sidecar(out)

    assert sidecar == tmp_path / "table.csv.provenance.json"
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    assert record["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    # the output itself is not an input, although it exists and is named on the command line
    assert record["inputs"] == [{"path": str(weights), "sha256": hashlib.sha256(b"weights v1").hexdigest()}]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert record["git"]["commit"] == head and isinstance(record["git"]["dirty"], bool)
    import torch

    import segvol

    assert record["segvol"] == segvol.__version__
    assert record["packages"]["torch"] == torch.__version__
    assert record["device"] == "cpu" and record["world_size"] == 1 and record["slurm_job_id"] is None
    assert record["command"][:2] == ["segvol", "evaluate"]


def test_a_changed_input_changes_its_hash_and_slurm_job_is_recorded(tmp_path, monkeypatch):
    weights = tmp_path / "weights.bin"
    out = tmp_path / "model.safetensors"
    provenance.set_command(["segvol", "finetune", "--encoder", str(weights)])
    out.write_bytes(b"model")
    weights.write_bytes(b"one")
    first = provenance.record(out)["inputs"][0]["sha256"]
    weights.write_bytes(b"two!")  # another size and time: not served from the per-process cache
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = provenance.record(out)
    assert first != second["inputs"][0]["sha256"] == hashlib.sha256(b"two!").hexdigest()
    assert (second["slurm_job_id"], second["world_size"]) == ("4242", 2)


def test_store_digest_reads_metadata_not_chunks(tmp_path):
    store = tmp_path / "a.zarr"
    (store / "case_000" / "image" / "c" / "0").mkdir(parents=True)
    metadata = store / "case_000" / "image" / "zarr.json"
    chunk = store / "case_000" / "image" / "c" / "0" / "0"
    metadata.write_text('{"shape": [4]}', encoding="utf-8")
    chunk.write_bytes(b"abcd")
    base = provenance.sha256_tree(store)
    chunk.write_bytes(b"wxyz")  # same name and size: the digest does not read chunk bytes
    assert provenance.sha256_tree(store) == base
    chunk.write_bytes(b"wxyz!")
    assert provenance.sha256_tree(store) != base
    chunk.write_bytes(b"abcd")
    metadata.write_text('{"shape": [5]}', encoding="utf-8")
    assert provenance.sha256_tree(store) != base


def test_writers_leave_sidecars_for_tables_figures_and_model_files(tmp_path):
    import torch

    from segvol.evaluate import plots, tables
    from segvol.model import checkpoint

    tables.write_csv(pd.DataFrame({"x": [1.0]}), tmp_path / "table.csv")
    figure = plots.pyplot().figure()
    plots.save(figure, tmp_path / "figure.png")
    checkpoint.save_image_encoder(torch.nn.Linear(2, 2), tmp_path / "encoder.safetensors")
    for name in ("table.csv", "figure.png", "encoder.safetensors"):
        record = provenance.read_sidecar(tmp_path / name)
        assert record["sha256"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest(), name
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []
    with pytest.raises(FileNotFoundError, match="no provenance sidecar"):
        provenance.read_sidecar(tmp_path / "elsewhere.csv")


BENCHMARK = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_provenance_command_tabulates_sidecars_and_benchmarks(tmp_path):
    from segvol.cli import main

    results = tmp_path / "results"
    (results / "figures").mkdir(parents=True)
    (results / "figures" / "fig.png").write_bytes(b"png")
    provenance.set_device("cuda:0")
    provenance.write_sidecar(results / "figures" / "fig.png")
    (tmp_path / "benchmarks" / "normalize").mkdir(parents=True)
    (tmp_path / "benchmarks" / "normalize" / "abdomen_a.tsv").write_text(
        BENCHMARK + "12.5\t0:00:12\t812.5\t2100.0\t800\t805\t1\t2\t90.0\t11.0\n", encoding="utf-8"
    )
    (tmp_path / "benchmarks" / "table2.tsv").write_text(
        BENCHMARK + "1.0\t0:00:01\t150.0\t900.0\t140\t141\t0\t0\t50.0\t0.9\n", encoding="utf-8"
    )

    code = main(
        [
            "provenance",
            "--results",
            str(results),
            "--benchmarks",
            str(tmp_path / "benchmarks"),
            "--provenance-out",
            str(tmp_path / "provenance.csv"),
            "--runtime-out",
            str(tmp_path / "runtime.csv"),
        ]
    )
    assert code == 0
    rows = pd.read_csv(tmp_path / "provenance.csv")
    assert rows["output"].tolist() == ["figures/fig.png"] and rows["device"].tolist() == ["cuda:0"]
    runtime = pd.read_csv(tmp_path / "runtime.csv").set_index("job")
    assert runtime.loc["abdomen_a", ["rule", "seconds", "max_rss_mb"]].tolist() == ["normalize", 12.5, 812.5]
    assert runtime.loc["table2", "rule"] == "table2"


def test_provenance_command_names_a_missing_folder(tmp_path, capsys):
    from segvol.cli import main

    code = main(
        [
            "provenance",
            "--results",
            str(tmp_path / "nope"),
            "--benchmarks",
            str(tmp_path),
            "--provenance-out",
            str(tmp_path / "p.csv"),
            "--runtime-out",
            str(tmp_path / "r.csv"),
        ]
    )
    assert code == 2
    assert "nope: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_a_prediction_records_its_provenance_in_its_manifest(tmp_path):
    import json

    from segvol.infer.predict import predict_file
    from tests.stand_in_models import BoxModel
    from tests.test_predict import write_phantom

    image = tmp_path / "ct.nii.gz"
    write_phantom(image)
    out = tmp_path / "seg.nii.gz"
    provenance.set_command(["segvol", "predict", str(image), "-o", str(out)])
    predict_file(BoxModel((8, 32, 32)), image, out, [{"name": "thing", "box": [10, 5, 20, 30, 15, 50]}])
    record = json.loads((tmp_path / "seg.json").read_text())["provenance"]
    assert not provenance.sidecar_path(out).exists()  # the manifest is the prediction's record
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert record["inputs"] == [{"path": str(image), "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}]
