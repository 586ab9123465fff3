"""`segvol serve`'s interactive features: a newer click supersedes a running one; a label map imported
as an object, edited by clicks and exported like `segvol predict --init-mask`."""

import json
import threading
import time

import nibabel as nib
import numpy as np

from segvol.infer.predict import predict_file
from tests import test_serve
from tests.test_serve import request

served = test_serve.served  # the fixture: a server on 127.0.0.1 over a folder with one CT (ct.nii.gz)
CLICK = {"object": "liver", "view": "axial", "index": 20, "y": 26, "positive": True}  # inside the CT's bright block
AFFINE = np.diag([-0.9, 0.8, 2.5, 1.0])  # the synthetic CT's grid


def wait_for(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_newer_click_supersedes_a_running_one(served, monkeypatch):
    server, _ = served
    workspace = server.workspace
    request(server, "/api/open", {"path": "ct.nii.gz"})
    request(server, "/api/object", {"name": "liver"})
    session = workspace.session
    real, running, release, segmented = session.region_logits, threading.Event(), threading.Event(), []

    def slow(name):  # the first segmentation waits until the test lets it finish
        segmented.append([tuple(p) for p in session.prompts[name]["points"]])
        if len(segmented) == 1:
            running.set()
            assert release.wait(30)
        return real(name)

    monkeypatch.setattr(session, "region_logits", slow)
    answers = {}

    def click(key, x):
        answers[key] = request(server, "/api/point", {**CLICK, "x": x})

    first = threading.Thread(target=click, args=("first", 12))
    first.start()
    assert running.wait(20)
    # While the model runs, the views still render (the state lock is not held meanwhile) ...
    started = time.monotonic()
    status, png = request(server, "/api/slice?view=axial&index=20")
    assert status == 200 and png[:4] == b"\x89PNG" and time.monotonic() - started < 5
    # ... and two more clicks come in: both are recorded before the first one's result is back.
    others = [threading.Thread(target=click, args=(key, x)) for key, x in (("second", 14), ("third", 16))]
    for count, thread in enumerate(others, start=2):
        thread.start()
        wait_for(lambda count=count: workspace.objects[0].edits == count)
    release.set()
    for thread in (first, *others):
        thread.join(30)
    statuses = {key: answer[0] for key, answer in answers.items()}
    assert statuses == {"first": 409, "second": 409, "third": 200}, answers
    assert answers["first"][1]["superseded"] is True and "newer request" in answers["first"][1]["error"]
    # the waiting second click did no work: one segmentation for the first, one for the latest state
    assert len(segmented) == 2 and len(segmented[1]) == 3
    state = answers["third"][1]
    assert len(state["objects"][0]["points"]) == 3
    # the shown mask is the latest prompts' segmentation, not a stale one
    expected = session.mask("liver")
    assert np.array_equal(workspace.objects[0].mask, expected) and expected.any()
    assert request(server, "/api/state")[1]["objects"] == state["objects"]


def write_labels(path):
    """On the synthetic CT's grid: label 2 a ball in the bright block, label 5 a slab of the body."""
    i, j, k = np.meshgrid(np.arange(40), np.arange(48), np.arange(44), indexing="ij")
    labels = np.zeros((40, 48, 44), np.uint8)
    labels[(i - 20) ** 2 + (j - 22) ** 2 + ((k - 20) * 2.5 / 0.9) ** 2 <= 25] = 2
    labels[10:30, 30:40, 30:36] = 5
    nib.save(nib.Nifti1Image(labels, AFFINE), str(path))
    return labels


def label_map(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_an_imported_label_is_an_object_that_clicks_edit_and_export_round_trips(served, tmp_path):
    server, root = served
    labels = write_labels(root / "labels.nii.gz")
    (root / "labels.json").write_text(json.dumps({"labels": {"0": "background", "2": "kidney"}}))
    request(server, "/api/open", {"path": "ct.nii.gz"})
    status, loaded = request(server, "/api/labels", {"path": "labels.nii.gz"})
    assert status == 200 and loaded["source"] == "labels.nii.gz"
    assert loaded["labels"] == [
        {"value": 2, "voxels": int((labels == 2).sum()), "name": "kidney"},
        {"value": 5, "voxels": int((labels == 5).sum()), "name": None},
    ]
    status, state = request(server, "/api/import", {"label": 2})
    assert status == 200 and state["objects"][0]["name"] == "kidney"
    assert state["objects"][0]["start"] == "labels.nii.gz:2" and state["objects"][0]["voxels"] == (labels == 2).sum()

    status, exported = request(server, "/api/export", {"name": "as_imported"})
    assert status == 200 and exported["records"] == [{"name": "kidney", "init_mask": "labels.nii.gz:2"}]
    np.testing.assert_array_equal(label_map(root / "as_imported.nii.gz"), (labels == 2).astype(np.uint8))

    # A positive click just outside the ball (file voxel (12, 21, 20)) edits the object near it.
    status, state = request(server, "/api/point", {**CLICK, "object": "kidney", "x": 12})
    assert status == 200 and state["objects"][0]["voxels"] > (labels == 2).sum()
    status, exported = request(server, "/api/export", {"name": "edited"})
    edited = label_map(root / "edited.nii.gz")
    assert edited[12, 21, 20] == 1 and labels[12, 21, 20] == 0
    assert edited.sum() == state["objects"][0]["voxels"]  # the export is what the page showed
    # ... and is what `segvol predict --init-mask labels.nii.gz:2 --point 12 21 20` writes
    records = [{**exported["records"][0], "init_mask": f"{root / 'labels.nii.gz'}:2"}]
    assert records[0]["points"] == [[12, 21, 20]]
    predict_file(server.workspace.model, root / "ct.nii.gz", tmp_path / "cli.nii.gz", records)
    np.testing.assert_array_equal(label_map(tmp_path / "cli.nii.gz"), edited)

    status, state = request(server, "/api/undo", {})
    assert state["objects"][0]["voxels"] == (labels == 2).sum()
    status, state = request(server, "/api/undo", {})
    assert state["objects"] == []


def test_label_maps_are_checked_like_images(served, tmp_path):
    server, root = served
    write_labels(root / "labels.nii.gz")
    shifted = AFFINE.copy()
    shifted[:3, 3] += 4.0
    nib.save(nib.Nifti1Image(label_map(root / "labels.nii.gz"), shifted), str(root / "shifted.nii.gz"))
    (tmp_path / "outside.nii.gz").write_bytes((root / "labels.nii.gz").read_bytes())
    status, payload = request(server, "/api/labels", {"path": "labels.nii.gz"})
    assert status == 400 and payload["error"] == "no image is open"
    request(server, "/api/open", {"path": "ct.nii.gz"})
    status, payload = request(server, "/api/labels", {"path": "../outside.nii.gz"})
    assert status == 403 and "outside the served folder" in payload["error"]
    status, payload = request(server, "/api/labels", {"path": "shifted.nii.gz"})
    assert status == 400 and "not on the grid" in payload["error"] and str(tmp_path) not in payload["error"]
    status, payload = request(server, "/api/import", {"label": 2})
    assert status == 400 and "no label map is loaded" in payload["error"]
    # an upload: read, kept in memory, its file removed at once
    data = (root / "labels.nii.gz").read_bytes()
    status, loaded = request(server, "/api/upload-labels", data=data, headers={"X-Filename": "mine.nii.gz"})
    assert status == 200 and [item["value"] for item in loaded["labels"]] == [2, 5]
    assert not list(server.upload_root.rglob("*.nii.gz"))
    status, payload = request(server, "/api/import", {"label": 7})
    assert status == 400 and "no voxel of label 7" in payload["error"]
    status, state = request(server, "/api/import", {"label": 5, "name": "slab"})
    assert status == 200 and state["objects"][0]["start"] == "mine.nii.gz:5"
    status, payload = request(server, "/api/upload-labels", data=b"junk", headers={"X-Filename": "bad.nii.gz"})
    assert status == 400 and "bad.nii.gz" in payload["error"] and "\n" not in payload["error"]
