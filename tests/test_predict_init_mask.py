"""`segvol predict --init-mask LABELS:ID`: a category started from an existing label, refined by prompts."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from segvol.cli import main
from segvol.infer.predict import predict_file
from tests.stand_in_models import BoxModel
from tests.test_predict import NON_RAS_AFFINE, write_phantom

torch.set_num_threads(1)


def write_labels(path, shape=(50, 24, 70), affine=NON_RAS_AFFINE):
    """Two labels in the file's own (non-canonical) voxel order: 2 a block, 5 another one."""
    labels = np.zeros(shape, np.uint8)
    labels[10:20, 5:12, 20:40] = 2
    labels[30:40, 14:20, 45:60] = 5
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    return labels


def written(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_an_init_mask_alone_is_the_label_and_a_click_edits_it(tmp_path):
    write_phantom(tmp_path / "ct.nii.gz")
    labels = write_labels(tmp_path / "labels.nii.gz")
    model = BoxModel((8, 32, 32))
    spec = f"{tmp_path / 'labels.nii.gz'}:2"
    predict_file(model, tmp_path / "ct.nii.gz", tmp_path / "kept.nii.gz", [{"name": "organ", "init_mask": spec}])
    np.testing.assert_array_equal(written(tmp_path / "kept.nii.gz"), (labels == 2).astype(np.uint8))
    manifest = json.loads((tmp_path / "kept.json").read_text())
    assert manifest["prompts"][0]["init_mask"] == spec

    # A positive click just outside the label: the model's logits replace the mask near it, not elsewhere.
    click = [22, 8, 30]
    records = [{"name": "organ", "init_mask": spec, "points": [click], "point_labels": [1]}]
    predict_file(model, tmp_path / "ct.nii.gz", tmp_path / "edited.nii.gz", records)
    edited = written(tmp_path / "edited.nii.gz")
    assert edited[tuple(click)] == 1 and not (labels == 2)[tuple(click)]
    assert edited.sum() > (labels == 2).sum()
    far = np.zeros(labels.shape, bool)
    far[:, :, :12] = True  # > 20 mm (0.8 mm voxels along this axis... 1.2/2.5 along others) from the click
    np.testing.assert_array_equal(edited[far], (labels == 2)[far])


def test_the_command_line_writes_the_label_when_no_prompt_is_given(tmp_path, tiny_checkpoint):
    write_phantom(tmp_path / "ct.nii.gz")
    labels = write_labels(tmp_path / "labels.nii.gz")
    out = tmp_path / "seg.nii.gz"
    args = ["predict", str(tmp_path / "ct.nii.gz"), "-o", str(out), "--checkpoint", str(tiny_checkpoint)]
    assert main([*args, "--init-mask", f"{tmp_path / 'labels.nii.gz'}:5", "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_array_equal(written(out), (labels == 5).astype(np.uint8))
    assert json.loads((tmp_path / "seg.json").read_text())["labels"] == {"0": "background", "1": "label 5"}


@pytest.mark.parametrize(
    "spec,message",
    [
        ("other_grid.nii.gz:2", "not on the grid"),
        ("labels.nii.gz:7", "no voxel of label 7"),
        ("labels.nii.gz", "expected LABELS:ID"),
        ("labels.nii.gz:liver", "expected LABELS:ID"),
        ("labels.nii.gz:0", "0 is the background"),
        ("missing.nii.gz:2", "no such label file"),
    ],
)
def test_a_bad_init_mask_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, tiny_checkpoint, spec, message):
    write_phantom(tmp_path / "ct.nii.gz")
    write_labels(tmp_path / "labels.nii.gz")
    shifted = NON_RAS_AFFINE.copy()
    shifted[:3, 3] += 5.0
    write_labels(tmp_path / "other_grid.nii.gz", affine=shifted)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(
        [
            "predict",
            str(tmp_path / "ct.nii.gz"),
            "-o",
            str(tmp_path / "seg.nii.gz"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--point",
            "15",
            "8",
            "30",
            "--init-mask",
            str(tmp_path / spec),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert spec.split(":")[0] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
