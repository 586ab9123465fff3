"""`segvol predict`: input geometry in and out, prompts in input voxel indices, bad prompts."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from segvol.cli import main
from segvol.infer.geometry import VoxelMap
from segvol.infer.predict import predict_file
from segvol.io import read_image, read_label
from tests.stand_in_models import BoxModel

torch.set_num_threads(1)

# A file stored with permuted, flipped, anisotropic axes (not RAS, not canonical).
NON_RAS_AFFINE = np.array(
    [
        [0.0, -2.5, 0.0, 120.0],
        [0.0, 0.0, 0.8, -40.0],
        [-1.2, 0.0, 0.0, 60.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def write_phantom(path, shape=(50, 24, 70), affine=NON_RAS_AFFINE, seed=0):
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, np.int16)
    hu[3:-3, 2:-2, 4:-4] = rng.integers(-100, 200, (shape[0] - 6, shape[1] - 4, shape[2] - 8))
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return hu


def box_mask(shape, box):
    mask = np.zeros(shape, bool)
    mask[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1] = True
    return mask


def test_file_to_canonical_map_is_the_readers_reorientation(tmp_path):
    path = tmp_path / "ct.nii.gz"
    hu = write_phantom(path)
    image = read_image(path)
    file_to_canonical = VoxelMap.from_affines(image.original_affine, image.affine)
    indices = np.argwhere(np.ones(hu.shape, bool))
    mapped = file_to_canonical.map_points(indices)
    np.testing.assert_array_equal(image.array[tuple(mapped.T)], hu[tuple(indices.T)])
    # and the reader's own inverse agrees voxel for voxel
    index_volume = np.arange(hu.size).reshape(hu.shape)
    canonical_index = image.from_original(index_volume)
    np.testing.assert_array_equal(canonical_index[tuple(mapped.T)], index_volume[tuple(indices.T)])


@pytest.mark.parametrize("mode", ["zoom", "window", "resize"])
def test_box_lands_on_the_input_grid_of_a_non_ras_file(tmp_path, mode):
    path = tmp_path / "ct.nii.gz"
    hu = write_phantom(path)
    box = [10, 5, 20, 30, 15, 50]  # i, j, k of the file as stored
    out = tmp_path / "out" / "seg.nii.gz"
    description = predict_file(
        BoxModel((8, 32, 32)), path, out, [{"name": "thing", "box": box}], mode=mode, box_limits=mode == "resize"
    )
    written = nib.load(str(out))
    assert written.shape == hu.shape
    np.testing.assert_allclose(written.affine, NON_RAS_AFFINE)
    mask = np.asarray(written.dataobj) == 1
    expected = box_mask(hu.shape, box)
    if mode == "zoom":  # coarse voxels past the box may survive without the box limit
        assert np.all(mask[expected]) and mask.sum() < 1.2 * expected.sum()
    else:  # window: refined everywhere; resize: coarse cut to the box
        np.testing.assert_array_equal(mask, expected)
    sidecar = json.loads((tmp_path / "out" / "seg.json").read_text(encoding="utf-8"))
    assert sidecar == description and sidecar["labels"] == {"0": "background", "1": "thing"}
    assert sidecar["voxels"]["thing"] == int(mask.sum())


def test_world_coordinates_equal_voxel_coordinates(tmp_path):
    path = tmp_path / "ct.nii.gz"
    write_phantom(path)
    box = np.array([10, 5, 20, 30, 15, 50])
    corners_world = nib.affines.apply_affine(NON_RAS_AFFINE, box.reshape(2, 3)).reshape(-1)
    predict_file(BoxModel((8, 32, 32)), path, tmp_path / "a.nii.gz", [{"box": box.tolist()}])
    predict_file(BoxModel((8, 32, 32)), path, tmp_path / "b.nii.gz", [{"box": corners_world.tolist()}], world=True)
    predict_file(BoxModel((8, 32, 32)), path, tmp_path / "c.nii.gz", [{"box": box.tolist()}], box_limits=False)
    a = np.asarray(nib.load(str(tmp_path / "a.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b.nii.gz")).dataobj)
    c = np.asarray(nib.load(str(tmp_path / "c.nii.gz")).dataobj)
    assert a.sum() > 0
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, box_mask(a.shape, box))
    assert c.sum() >= a.sum() and np.all(c[a == 1] == 1)


def test_overlapping_categories_most_probable_wins(tmp_path):
    path = tmp_path / "ct.nii.gz"
    hu = write_phantom(path)
    records = [{"name": "a", "box": [10, 5, 20, 30, 15, 50]}, {"name": "b", "box": [20, 8, 30, 40, 20, 60]}]
    predict_file(BoxModel((8, 32, 32)), path, tmp_path / "s.nii.gz", records, probabilities=True)
    labels = np.asarray(nib.load(str(tmp_path / "s.nii.gz")).dataobj)
    a, b = box_mask(hu.shape, records[0]["box"]), box_mask(hu.shape, records[1]["box"])
    assert np.all(labels[a & ~b] == 1) and np.all(labels[b & ~a] == 2) and np.all(labels[~a & ~b] == 0)
    assert set(np.unique(labels[a & b])) <= {1, 2}  # equal logits there: either is right
    probabilities = nib.load(str(tmp_path / "s_probabilities" / "01_a.nii.gz"))
    assert probabilities.get_data_dtype() == np.float32 and probabilities.shape == hu.shape
    np.testing.assert_array_equal(np.asarray(probabilities.dataobj) > 0.5, a)


def liver_box_in_file_indices(image, label):
    """Inclusive box (input-file indices) around label 5 (liver) of a canonical label map."""
    liver = np.argwhere(label.array == 5)
    canonical_box = np.concatenate([liver.min(axis=0), liver.max(axis=0)])
    to_file = VoxelMap.from_affines(image.affine, image.original_affine)
    return to_file.map_box(canonical_box, image.original_shape)


@pytest.mark.parametrize(
    "case,seg",
    [
        ("abdomen_ct_3mm/example_ct.nii.gz", "abdomen_ct_3mm/example_seg_fast_force_split.nii.gz"),
        ("ct_dicom_series/dicom", "ct_dicom_series/example_seg_dicom.nii.gz"),
    ],
)
def test_predict_real_ct_keeps_geometry_and_box(shared_data, tmp_path, case, seg):
    root = shared_data / "totalsegmentator"
    image = read_image(root / case)
    label = read_label(root / seg, image)
    box = liver_box_in_file_indices(image, label)
    out = tmp_path / "liver.nii.gz"
    predict_file(BoxModel((16, 64, 64)), root / case, out, [{"name": "liver", "text": "liver", "box": box.tolist()}])
    written = nib.load(str(out))
    assert written.shape == tuple(image.original_shape)
    np.testing.assert_allclose(written.affine, image.original_affine, atol=1e-4)
    mask = np.asarray(written.dataobj) == 1
    assert mask.any() and not np.any(mask & ~box_mask(mask.shape, box))
    # physically aligned: every silver liver voxel is inside the predicted region
    predicted = read_label(out, image)
    assert np.all(predicted.array[label.array == 5] == 1)


def test_cli_with_tiny_random_weights(shared_data, tmp_path, tiny_checkpoint):
    path = shared_data / "totalsegmentator" / "abdomen_ct_3mm_small" / "example_ct_sm.nii.gz"
    out = tmp_path / "seg.nii.gz"
    code = main(
        [
            "predict",
            str(path),
            "-o",
            str(out),
            "--checkpoint",
            str(tiny_checkpoint),
            "--text",
            "liver",
            "--box",
            "20",
            "20",
            "5",
            "80",
            "70",
            "25",
            "--point",
            "50",
            "45",
            "15",
            "--negative-point",
            "10",
            "10",
            "10",
            "--probabilities",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    source = nib.load(str(path))
    written = nib.load(str(out))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    probability = np.asarray(nib.load(str(tmp_path / "seg_probabilities" / "01_liver.nii.gz")).dataobj)
    assert probability.min() >= 0 and probability.max() <= 1
    np.testing.assert_array_equal(probability > 0.5, np.asarray(written.dataobj) == 1)
    sidecar = json.loads((tmp_path / "seg.json").read_text(encoding="utf-8"))
    assert sidecar["prompts"][0]["point_labels"] == [1, 0]


class TextlessModel(BoxModel):
    def encode_text(self, names):
        raise KeyError(f"no text encoder for {names}")


@pytest.mark.parametrize(
    "records,message",
    [
        ([{"box": [0, 0, 0, 60, 10, 10]}], "outside"),
        ([{"box": [10, 10, 10, 5, 20, 20]}], "inverted"),
        ([{"points": [[5, 5, 5]], "point_labels": [2]}], "1 \\(inside\\) or 0"),
        ([{"points": [[5, 5, 90]]}], "outside"),
        ([{"text": "liver", "colour": "red"}], "unknown key"),
        ([{"box": [0, 0, 0, 2, 1, 3]}], "background"),
    ],
)
def test_bad_prompts_raise_and_write_nothing(tmp_path, records, message):
    path = tmp_path / "ct.nii.gz"
    write_phantom(path)
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(ValueError, match=message):
        predict_file(BoxModel((8, 32, 32)), path, out, records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_unknown_text_raises(tmp_path):
    path = tmp_path / "ct.nii.gz"
    write_phantom(path)
    with pytest.raises(ValueError, match="cannot be embedded"):
        predict_file(TextlessModel((8, 32, 32)), path, tmp_path / "seg.nii.gz", [{"text": "liver"}])


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, tiny_checkpoint):
    path = tmp_path / "ct.nii.gz"
    write_phantom(path)
    code = main(
        [
            "predict",
            str(path),
            "-o",
            str(tmp_path / "s.nii.gz"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--box",
            "0",
            "0",
            "0",
            "99",
            "5",
            "5",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "outside" in err and str(path) in err
    assert not (tmp_path / "s.nii.gz").exists()


def test_cli_loads_our_checkpoint(tmp_path):
    from segvol.model import build_model, model_config
    from segvol.model.checkpoint import save

    torch.manual_seed(1)
    save(build_model(model_config("tiny")), tmp_path / "tiny.safetensors")
    path = tmp_path / "ct.nii.gz"
    hu = write_phantom(path, shape=(40, 30, 50))
    out = tmp_path / "seg.nii.gz"
    code = main(
        [
            "predict",
            str(path),
            "-o",
            str(out),
            "--checkpoint",
            str(tmp_path / "tiny.safetensors"),
            "--box",
            "10",
            "5",
            "10",
            "30",
            "20",
            "40",
            "--mode",
            "window",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    written = nib.load(str(out))
    assert written.shape == hu.shape
    np.testing.assert_allclose(written.affine, NON_RAS_AFFINE)
    mask = np.asarray(written.dataobj) == 1
    assert not np.any(mask & ~box_mask(hu.shape, [10, 5, 10, 30, 20, 40]))  # the box limit
    assert json.loads((tmp_path / "seg.json").read_text(encoding="utf-8"))["weights"]["checkpoint"].endswith(
        "tiny.safetensors"
    )


def oblique_phantom(path, degrees=20.0):
    """A CT whose grid is rotated by ``degrees`` about the z axis, with a bright ellipsoid."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 1.5, 2.5])
    affine[:3, 3] = [-30.0, 10.0, -50.0]
    shape = (60, 60, 30)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    hu = np.full(shape, 0, np.int16)
    hu[2:-2, 2:-2, 1:-1] = 40
    organ = (((grid - [30, 28, 15]) / [14, 6, 7]) ** 2).sum(axis=-1) <= 1
    hu[organ] = 200
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return affine, organ


def test_world_box_on_an_oblique_image_covers_the_object(tmp_path):
    from segvol.infer.prompts import world_to_voxel_records

    path = tmp_path / "oblique.nii.gz"
    affine, organ = oblique_phantom(path)
    world = nib.affines.apply_affine(affine, np.argwhere(organ))
    world_box = [*world.min(axis=0), *world.max(axis=0)]  # what a viewer's RAS+ box around it gives
    image = read_image(path)
    voxel_box = np.array(world_to_voxel_records([{"box": world_box}], image)[0]["box"])
    assert np.all(box_mask(organ.shape, voxel_box)[organ])
    # the test can tell: the two mapped corners alone leave part of the object outside
    two = np.floor(nib.affines.apply_affine(np.linalg.inv(affine), np.reshape(world_box, (2, 3))) + 0.5)
    two_box = np.concatenate([two.min(axis=0), two.max(axis=0)]).astype(int)
    assert not np.all(box_mask(organ.shape, two_box)[organ])

    predict_file(
        BoxModel((8, 32, 32)),
        path,
        tmp_path / "seg.nii.gz",
        [{"name": "organ", "box": world_box}],
        world=True,
        mode="window",
    )
    mask = np.asarray(nib.load(str(tmp_path / "seg.nii.gz")).dataobj) == 1
    assert np.all(mask[organ])
    manifest = json.loads((tmp_path / "seg.json").read_text())
    assert manifest["prompts"][0]["box"] == voxel_box.tolist()
    np.testing.assert_allclose(
        manifest["prompts"][0]["box_world"],
        nib.affines.apply_affine(affine, voxel_box.reshape(2, 3)).reshape(-1),
        atol=1e-3,
    )


def test_label_map_built_category_by_category_is_the_most_probable_above_half():
    from segvol.infer.outputs import LabelMapBuilder

    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(0, 2, (4, 20, 9, 7)).astype(np.float32))
    builder = LabelMapBuilder(logits.shape[1:], 4)
    for k in range(4):
        builder.add(k, logits[k])
    best, index = logits.max(dim=0)
    expected = np.where(best.numpy() > 0, index.numpy() + 1, 0)
    np.testing.assert_array_equal(builder.labels, expected)
    assert len(np.unique(expected)) == 5  # every category wins somewhere, and background too


def expected_label_map(logits: np.ndarray) -> np.ndarray:
    """The all-in-memory rule: the most probable category above 0.5, the earlier one on ties."""
    winner = np.argmax(logits, axis=0)  # numpy: the first maximum on ties
    return np.where(np.take_along_axis(logits, winner[None], 0)[0] > 0, winner + 1, 0).astype(np.uint8)


def test_label_map_from_category_regions_equals_the_all_in_memory_argmax():
    from segvol.infer.outputs import LabelMapBuilder
    from segvol.infer.zoom import OUTSIDE_LOGIT

    rng = np.random.default_rng(5)
    shape = (30, 26, 22)
    regions = [
        np.array(r)
        for r in (
            [2, 3, 1, 14, 20, 12],
            [8, 0, 6, 29, 12, 21],
            [0, 10, 0, 20, 25, 15],
            [5, 5, 5, 25, 20, 18],
            [20, 20, 18, 29, 25, 21],
        )
    ]
    claims = [
        np.array(c)
        for c in (
            [4, 5, 3, 12, 15, 10],
            [9, 4, 7, 16, 12, 14],
            [6, 11, 4, 14, 18, 12],
            [7, 7, 6, 15, 16, 13],
            [20, 20, 18, 29, 25, 21],
        )
    ]
    full = np.full((len(regions), *shape), OUTSIDE_LOGIT, np.float32)
    builder = LabelMapBuilder(shape, len(regions))
    for k, (region, claim) in enumerate(zip(regions, claims)):
        values = np.full(shape, -1.0, np.float32)
        inside = tuple(slice(a, b + 1) for a, b in zip(claim[:3], claim[3:]))
        # half-steps: exact ties between categories are common, so the tie rule is tested too
        values[inside] = np.round(rng.normal(1.0, 1.0, values[inside].shape) * 2) / 2
        where = tuple(slice(a, b + 1) for a, b in zip(region[:3], region[3:]))
        full[(k, *where)] = values[where]
        builder.add(k, torch.from_numpy(values[where].copy()), region)
    expected = expected_label_map(full)
    np.testing.assert_array_equal(builder.labels, expected)
    assert len(np.unique(expected)) == len(regions) + 1
    ties = (full == full.max(axis=0)).sum(axis=0) > 1
    assert np.any(ties & (expected > 0))  # a later-wins merge would differ
    assert builder.best.numel() < np.prod(shape)  # the best logits are kept only where claimed


def test_streamed_outputs_equal_the_all_in_memory_computation(tmp_path):
    """predict_file (one category at a time, label map streamed, per-category files written as they
    come) against all K full-volume logits held at once."""
    from segvol.infer.predict import prepare
    from segvol.infer.zoom import segment
    from segvol.io.intensity import foreground_normalize
    from tests.stand_in_models import MixingModel

    path = tmp_path / "ct.nii.gz"
    write_phantom(path, seed=4)
    records = [
        {"name": "a", "box": [8, 4, 14, 34, 18, 56]},
        {"name": "b", "text": "spleen"},
        {"name": "c", "box": [15, 6, 25, 44, 20, 66], "points": [[30, 10, 40]]},
        {"name": "d", "text": "liver", "box": [5, 2, 5, 40, 15, 40]},
    ]
    model = MixingModel((8, 32, 32))
    predict_file(model, path, tmp_path / "s.nii.gz", records, masks=True, probabilities=True)

    image, _, canonical = prepare(path, records, world=False)
    volume = torch.from_numpy(foreground_normalize(image.array))
    logits = np.stack([segment(model, volume, [prompt])[0].numpy() for prompt in canonical])
    labels = np.asarray(nib.load(str(tmp_path / "s.nii.gz")).dataobj)
    expected = image.to_original(expected_label_map(logits))
    np.testing.assert_array_equal(labels, expected)
    overlap = (logits > 0).sum(axis=0) > 1
    assert overlap.sum() > 100 and len(np.unique(expected)) == 5  # categories compete for voxels
    for k, name in enumerate("abcd"):
        probability = np.asarray(nib.load(str(tmp_path / "s_probabilities" / f"0{k + 1}_{name}.nii.gz")).dataobj)
        # sigmoid of a region vs of the whole volume: equal up to one float32 ulp (vectorised tails)
        np.testing.assert_allclose(
            probability, image.to_original(torch.sigmoid(torch.from_numpy(logits[k])).numpy()), rtol=0, atol=1e-7
        )
        mask = np.asarray(nib.load(str(tmp_path / "s_masks" / f"0{k + 1}_{name}.nii.gz")).dataobj)
        np.testing.assert_array_equal(mask, image.to_original(logits[k] > 0))
