"""Fine-tuning on your own data: an nnU-Net v2 raw dataset -> store -> fine-tuning from a released-layout
checkpoint -> before/after on the held-out cases -> a checkpoint `segvol predict` and `segvol categories` take;
and the one-line refusals of bad datasets."""

from __future__ import annotations

import csv
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segvol.cli import main

TINY = {"preset": "tiny", "text_encoder": "minilm"}
# A name no vocabulary of the project knows: it gets its text embedding only from the fine-tuning.
NEW_NAME = "gastric pouch"
TRAINING = {
    "steps": 30,
    "validate_every": 15,
    "lr": 3.0e-3,
    "prompt_combinations": 2,
    "threads": 1,
    "checkpoint_every": 0,
    "prompts": ["box+text"],
    "test_fraction": 0.3,
    "validation_fraction": 0.25,
    "demo": {"n_cases": 6, "labels": ["liver", "stomach"], "domain": "external", "shape_max": [32, 64, 64]},
}


def released_checkpoint(path: Path, seed: int = 0) -> Path:
    """A `SegVol_v1.pth`-layout file (dict with 'model', keys prefixed `module.`) of a random `tiny` SegVol."""
    from segvol.model import build_model, model_config

    torch.manual_seed(seed)
    model = build_model(model_config("tiny"))
    torch.save({"model": {f"module.{key}": value for key, value in model.state_dict().items()}, "epoch": 0}, path)
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(map(str, argv)))
    return code, capsys.readouterr().err


def add_real_case(folder: Path, shared: Path) -> None:
    """The real CT of ../shared/data as one more case, its TotalSegmentator ids mapped to the dataset's."""
    real = shared / "totalsegmentator" / "abdomen_ct_3mm_small"
    spec = json.loads((folder / "dataset.json").read_text())
    shutil.copy(real / "example_ct_sm.nii.gz", folder / "imagesTr" / "realct_0000.nii.gz")
    seg = nib.load(real / "example_seg.nii.gz")
    ids = np.asanyarray(seg.dataobj)
    label = np.zeros(ids.shape, np.uint8)
    label[ids == 5] = spec["labels"]["liver"]
    label[ids == 6] = spec["labels"][NEW_NAME]
    nib.save(nib.Nifti1Image(label, seg.affine), folder / "labelsTr" / "realct.nii.gz")
    spec["numTraining"] += 1
    (folder / "dataset.json").write_text(json.dumps(spec))


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_own_data_path_raises_dice_on_held_out_cases(tmp_path, capsys, caplog, request):
    params = json.dumps(TRAINING)
    source = tmp_path / "Dataset900_OwnDemo"
    assert run(capsys, "own-data", "demo", "--out", source, "--seed", 1, "--params", params, "--quiet")[0] == 0
    spec = json.loads((source / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "CT"} and spec["file_ending"] == ".nii.gz" and spec["numTraining"] == 6
    assert len(list((source / "imagesTr").glob("*_0000.nii.gz"))) == 6 == len(list((source / "labelsTr").iterdir()))
    spec["labels"][NEW_NAME] = spec["labels"].pop("stomach")  # a category SegVol never heard of
    (source / "dataset.json").write_text(json.dumps(spec))
    try:
        add_real_case(source, request.getfixturevalue("shared_data"))
        real = True
    except pytest.skip.Exception:
        real = False

    from segvol.vocabulary import known_categories

    assert NEW_NAME not in known_categories()
    weights = released_checkpoint(tmp_path / "SegVol_v1.pth")
    store, model = tmp_path / "own.zarr", tmp_path / "own" / "model.safetensors"
    table, figure = tmp_path / "results" / "before_after.csv", tmp_path / "results" / "before_after.png"
    tiny = json.dumps(TINY)
    assert (
        run(
            capsys,
            "own-data",
            "prepare",
            "--source",
            source,
            "--out",
            store,
            "--seed",
            0,
            "--params",
            params,
            "--quiet",
        )[0]
        == 0
    )
    from segvol.io.store import open_store

    opened = open_store(store)
    split = opened.split
    assert opened.categories == ["liver", NEW_NAME] and opened.name == "Dataset900_OwnDemo"
    assert len(split["test"]) == 2 and len(split["validation"]) == 1
    assert not set(split["train"]) & set(split["test"]) and not set(split["validation"]) & set(split["test"])
    assert ("realct" in opened.cases) == real

    code, err = run(
        capsys,
        "own-data",
        "finetune",
        "--zarr",
        store,
        "--weights",
        weights,
        "--out",
        model,
        "--device",
        "cpu",
        "--seed",
        0,
        "--params",
        params,
        "--model",
        tiny,
        "--quiet",
    )
    assert code == 0, err
    validation = read_rows(model.with_name("model.validation.csv"))
    assert [int(row["step"]) for row in validation] == [0, 15, 30]
    assert sum(int(row["best"]) for row in validation) == 1
    assert (
        run(
            capsys,
            "own-data",
            "evaluate",
            "--zarr",
            store,
            "--weights",
            weights,
            "--checkpoint",
            model,
            "--out",
            table,
            "--figure",
            figure,
            "--device",
            "cpu",
            "--seed",
            0,
            "--params",
            params,
            "--model",
            tiny,
            "--quiet",
        )[0]
        == 0
    )

    # Fine-tuning raised Dice on the held-out cases: per (case, category), before and after.
    cases = read_rows(table.with_name("before_after_cases.csv"))
    before = {(r["case"], r["category"]): float(r["dice"]) for r in cases if r["model"] == "before"}
    after = {(r["case"], r["category"]): float(r["dice"]) for r in cases if r["model"] == "after"}
    assert set(before) == set(after) and {case for case, _ in before} == set(split["test"])
    gain = np.mean([after[key] - before[key] for key in before])
    assert gain > 0.1, (before, after)
    summary = {(row["prompt"], row["category"]): row for row in read_rows(table)}
    assert set(summary) == {("box+text", "liver"), ("box+text", NEW_NAME), ("box+text", "all categories")}
    overall = summary[("box+text", "all categories")]
    assert float(overall["dice_after"]) > float(overall["dice_before"])
    assert float(overall["dice_after_ci_low"]) <= float(overall["dice_after"]) <= float(overall["dice_after_ci_high"])
    assert 0 <= float(overall["nsd_after"]) <= 1 and figure.stat().st_size > 0

    # The checkpoint records its vocabulary; `segvol categories --checkpoint` lists the new name.
    code = main(["categories", "--checkpoint", str(model), "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0 and listed[NEW_NAME]["datasets"] == [f"checkpoint {model.name}"]

    # `segvol predict` takes it, and the new name is a known prompt for it (no warning).
    image = next(source.glob("imagesTr/*_0000.nii.gz"))
    label = np.asanyarray(nib.load(source / "labelsTr" / image.name.replace("_0000", "")).dataobj)
    inside = np.argwhere(label == spec["labels"][NEW_NAME])
    box = [*inside.min(0), *inside.max(0)]
    caplog.clear()
    code, err = run(
        capsys,
        "predict",
        image,
        "-o",
        tmp_path / "pred.nii.gz",
        "--checkpoint",
        model,
        "--text",
        NEW_NAME,
        "--box",
        *box,
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == 0, err
    assert "not a category" not in caplog.text + err
    predicted = np.asanyarray(nib.load(tmp_path / "pred.nii.gz").dataobj)
    assert predicted.shape == label.shape and (predicted == 1).any()

    # `segvol serve --checkpoint` loads it and offers the new name for completion.
    from types import SimpleNamespace

    from segvol.serve.cli import load_model
    from segvol.serve.server import SegVolServer

    assert load_model(str(model), False, "tiny", torch.device("cpu")).config.spatial_size == (32, 64, 64)
    server = SimpleNamespace(_categories=None, workspace=SimpleNamespace(weights=str(model)))
    assert NEW_NAME in SegVolServer.categories(server)


# ------------------------------------------------------------------------------------------------ bad inputs


def nnunet_folder(root: Path, cases=("case_a", "case_b", "case_c"), shape=(12, 10, 8)) -> Path:
    """A valid tiny nnU-Net v2 raw dataset: HU-like images, labels 1 (liver) and 2 (spleen)."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for case in cases:
        image = rng.integers(-1000, 200, size=shape).astype(np.int16)
        label = np.zeros(shape, np.uint8)
        label[2:6, 2:6, 2:5] = 1
        label[7:10, 5:8, 3:6] = 2
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "liver": 1, "spleen": 2},
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


def _edit_json(folder: Path, **changes):
    spec = json.loads((folder / "dataset.json").read_text())
    spec.update(changes)
    (folder / "dataset.json").write_text(json.dumps(spec))


def _label(folder: Path, case: str, array=None, affine=None):
    path = folder / "labelsTr" / f"{case}.nii.gz"
    old = nib.load(path)
    nib.save(
        nib.Nifti1Image(
            np.asanyarray(old.dataobj) if array is None else array, old.affine if affine is None else affine
        ),
        path,
    )


def _missing_label(f):
    (f / "labelsTr" / "case_b.nii.gz").unlink()
    return "labelsTr/case_b.nii.gz"


def _missing_image(f):
    (f / "imagesTr" / "case_c_0000.nii.gz").unlink()
    _edit_json(f, numTraining=2)
    return "imagesTr/case_c_0000.nii.gz"


def _shape_mismatch(f):
    _label(f, "case_a", array=np.zeros((12, 10, 9), np.uint8))
    return "labelsTr/case_a.nii.gz"


def _affine_mismatch(f):
    shifted = np.diag([1.5, 1.5, 3.0, 1.0])
    shifted[0, 3] = 6.0  # same shape, four voxels off
    _label(f, "case_b", affine=shifted)
    return "labelsTr/case_b.nii.gz"


def _unknown_id(f):
    array = np.asanyarray(nib.load(f / "labelsTr" / "case_c.nii.gz").dataobj).copy()
    array[0, 0, 0] = 7
    _label(f, "case_c", array=array)
    return "labelsTr/case_c.nii.gz: label id(s) [7]"


def _mr_channel(f):
    _edit_json(f, channel_names={"0": "T2"})
    return "dataset.json: channel 0 is 'T2', not CT"


def _two_channels(f):
    shutil.copy(f / "imagesTr" / "case_a_0000.nii.gz", f / "imagesTr" / "case_a_0001.nii.gz")
    return "imagesTr/case_a_0001.nii.gz: channel 0001"


def _empty(f):
    for path in [*(f / "imagesTr").iterdir(), *(f / "labelsTr").iterdir()]:
        path.unlink()
    _edit_json(f, numTraining=0)
    return "imagesTr: no training cases"


def _count_mismatch(f):
    _edit_json(f, numTraining=5)
    return "dataset.json: numTraining is 5 but imagesTr/ holds 3"


def _no_background(f):
    _edit_json(f, labels={"liver": 1, "spleen": 2})
    return 'dataset.json: labels must include "background": 0'


def _link_outside(f):
    target = f.parent / "elsewhere.nii.gz"
    shutil.copy(f / "imagesTr" / "case_a_0000.nii.gz", target)
    (f / "imagesTr" / "case_a_0000.nii.gz").unlink()
    (f / "imagesTr" / "case_a_0000.nii.gz").symlink_to(target)
    return "imagesTr/case_a_0000.nii.gz: links outside the dataset folder"


BAD_DATASETS = [
    _missing_label,
    _missing_image,
    _shape_mismatch,
    _affine_mismatch,
    _unknown_id,
    _mr_channel,
    _two_channels,
    _empty,
    _count_mismatch,
    _no_background,
    _link_outside,
]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("damage", BAD_DATASETS, ids=lambda f: f.__name__.strip("_"))
def test_bad_dataset_is_refused_in_one_line_naming_the_file(tmp_path, capsys, damage):
    folder = nnunet_folder(tmp_path / "Dataset501_Test")
    expected = damage(folder)
    before = _snapshot(tmp_path)
    out = tmp_path / "out" / "own.zarr"
    code, err = run(capsys, "own-data", "prepare", "--source", folder, "--out", out, "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("segvol own-data: error: "), err
    assert expected in err, err
    assert _snapshot(tmp_path) == before  # nothing written (not even the output's folder), nothing changed


def test_valid_dataset_and_the_image_label_pairs_layout(tmp_path, capsys):
    """The intact folder passes (so the refusals above are about the damage), and so does the pairs layout,
    which needs its names file and refuses a label id the names lack."""
    from segvol.io.store import open_store

    folder = nnunet_folder(tmp_path / "Dataset501_Test")
    assert run(capsys, "own-data", "prepare", "--source", folder, "--out", tmp_path / "a.zarr", "--quiet")[0] == 0
    assert open_store(tmp_path / "a.zarr").categories == ["liver", "spleen"]

    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "labels").mkdir()
    for case in ("case_a", "case_b", "case_c"):
        shutil.copy(folder / "imagesTr" / f"{case}_0000.nii.gz", pairs / "images" / f"{case}.nii.gz")
        shutil.copy(folder / "labelsTr" / f"{case}.nii.gz", pairs / "labels" / f"{case}.nii.gz")
    code, err = run(capsys, "own-data", "prepare", "--source", pairs, "--out", tmp_path / "b.zarr", "--quiet")
    assert code == 2 and "needs a names file" in err
    names = tmp_path / "names.yaml"
    names.write_text("liver: 1\n")
    params = json.dumps({"names": str(names)})
    code, err = run(
        capsys, "own-data", "prepare", "--source", pairs, "--out", tmp_path / "b.zarr", "--params", params, "--quiet"
    )
    assert code == 2 and "labels/case_a.nii.gz: label id(s) [2]" in err and not (tmp_path / "b.zarr").exists()
    names.write_text("liver: 1\nSpleen: [2]\n")
    assert (
        run(
            capsys,
            "own-data",
            "prepare",
            "--source",
            pairs,
            "--out",
            tmp_path / "b.zarr",
            "--params",
            params,
            "--quiet",
        )[0]
        == 0
    )
    assert open_store(tmp_path / "b.zarr").categories == ["liver", "spleen"]


# ------------------------------------------------------------------------------------------------ weights


class _ModelHub(BaseHTTPRequestHandler):
    """The two Hub requests `hf_hub_download` makes for a model file (HEAD for its metadata, GET for its bytes)."""

    def log_message(self, *args):
        pass

    def _answer(self, head: bool):
        data = self.server.files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        import hashlib

        self.send_response(200)
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)


def test_released_weights_from_a_local_file_and_from_the_hub(tmp_path, monkeypatch):
    """`SegVol_v1.pth` layout from a file and `hf://BAAI/SegVol` (pytorch_model.bin, `model.` keys) from a loopback
    Hub load into the `model:` block's network bit for bit; a network that does not fit is refused with the hint."""
    from huggingface_hub import constants

    from segvol.model import build_model, model_config
    from segvol.own_data.train import starting_model

    weights = released_checkpoint(tmp_path / "SegVol_v1.pth", seed=3)
    reference = torch.load(weights, weights_only=True)["model"]
    model, vocabulary = starting_model(str(weights), TINY)
    assert vocabulary == []
    assert all(
        torch.equal(value, reference[f"module.{key}"])
        for key, value in model.state_dict().items()
        if f"module.{key}" in reference
    )

    torch.manual_seed(4)
    hub_state = {f"model.{k}": v for k, v in build_model(model_config("tiny")).state_dict().items()}
    torch.save(hub_state, tmp_path / "pytorch_model.bin")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ModelHub)
    httpd.files = {"/BAAI/SegVol/resolve/main/pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes()}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        model, _ = starting_model("hf://BAAI/SegVol", TINY)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert all(
        torch.equal(value, hub_state[f"model.{key}"])
        for key, value in model.state_dict().items()
        if f"model.{key}" in hub_state
    )

    with pytest.raises(ValueError, match=r"does not fit the model.*model: \{preset: base, text_encoder: clip\}"):
        starting_model(str(weights), {**TINY, "overrides": {"num_layers": 2}})


# ------------------------------------------------------------------------------------------------ workflow


def test_workflow_plans_own_data_on_the_cpu_and_on_slurm_gpus(tmp_path):
    """The demo plans demo data -> store -> fine-tuning of the workflow's own SegVol -> before/after on the CPU;
    your dataset and weights through the Slurm profile with own_data.gpu get --device cuda; every command parses."""
    import shlex

    from segvol.cli import build_parser
    from tests.test_rule_devices import shell_commands
    from tests.test_workflow import REPO, assert_ok, snakemake

    plan = [
        "-n",
        "-p",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path / "run"),
        "results/own/before_after.csv",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "own.yaml"),
    ]
    demo = shell_commands(assert_ok(snakemake(*plan)))
    assert {"own_data_demo", "own_data_prepare", "own_data_finetune", "own_data_evaluate", "finetune"} <= set(demo)
    assert "--weights models/finetune/segvol/model.safetensors" in demo["own_data_finetune"][0]
    assert all("--device cpu" in demo[rule][0] for rule in ("own_data_finetune", "own_data_evaluate"))

    source, weights = nnunet_folder(tmp_path / "Dataset501_Test"), tmp_path / "SegVol_v1.pth"
    weights.write_bytes(b"")  # a dry run does not read it
    own = f"own_data={{source: {source}, weights: {weights}, gpu: 1}}"
    cluster = shell_commands(
        assert_ok(snakemake(*plan, "--profile", str(REPO / "profiles" / "slurm"), "--cores", "64", "--config", own))
    )
    assert set(cluster) == {"own_data_prepare", "own_data_finetune", "own_data_evaluate"}
    assert f"--source {source}" in cluster["own_data_prepare"][0]
    for rule in ("own_data_finetune", "own_data_evaluate"):
        assert "--device cuda" in cluster[rule][0] and f"--weights {weights}" in cluster[rule][0], cluster[rule]
    for commands in (demo, cluster):
        for rule, lines in commands.items():
            words = shlex.split(lines[0].split(" > ", 1)[0])
            assert build_parser(words[1]).parse_args(words[1:]).command == words[1], rule


def test_killed_fine_tuning_resumes_with_its_best_weights(tmp_path, capsys):
    """A run killed after 3 of 4 steps and resumed writes the same bytes and validation history as one that was
    never interrupted (the best weights so far survive the kill); the training state is gone at the end."""
    from segvol.own_data.prepare import prepare
    from segvol.own_data.train import finetune_own
    from segvol.settings import stage_settings

    settings = stage_settings(
        "own_data",
        {
            "steps": 4,
            "validate_every": 2,
            "checkpoint_every": 2,
            "lr": 3.0e-3,
            "prompt_combinations": 1,
            "threads": 1,
            "prompts": ["box"],
            "validation_fraction": 0.5,
            "test_fraction": 0.3,
        },
    )
    store = prepare(
        nnunet_folder(tmp_path / "data", cases=("a", "b", "c", "d")),
        tmp_path / "own.zarr",
        0,
        settings,
        stage_settings("normalize", {}),
        progress=False,
    )
    weights = str(released_checkpoint(tmp_path / "SegVol_v1.pth"))
    model = stage_settings("model", TINY)
    whole = finetune_own(
        str(store),
        None,
        tmp_path / "whole" / "model.safetensors",
        settings,
        model,
        weights,
        seed=0,
        threads=1,
        device="cpu",
    )
    resumed = tmp_path / "resumed" / "model.safetensors"
    finetune_own(str(store), None, resumed, settings, model, weights, seed=0, threads=1, device="cpu", stop_after=3)
    assert not resumed.exists() and (tmp_path / "resumed" / "model.safetensors.ckpt" / "best.pt").is_file()
    finetune_own(str(store), None, resumed, settings, model, weights, seed=0, threads=1, device="cpu")
    assert resumed.read_bytes() == Path(whole).read_bytes()
    history = read_rows(resumed.with_name("model.validation.csv"))
    assert history == read_rows(Path(whole).with_name("model.validation.csv"))
    assert [row["step"] for row in history] == ["0", "2", "4"]
    assert not (tmp_path / "resumed" / "model.safetensors.ckpt").exists()
