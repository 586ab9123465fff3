"""`segvol synth`: procedural CT phantoms written as a raw dataset folder."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from segvol.synth import dataset as synth_dataset
from segvol.synth.anatomy import Tissue
from segvol.synth.appearance import DOMAINS, EXTERNAL, TRAIN, draw_tissue_hu
from segvol.synth.dataset import synthesize_dataset, to_nifti
from segvol.synth.labels import label_space, supported_categories
from segvol.synth.phantom import case_rng, make_phantom

SMALL = [32, 64, 64]


def params(name, role="train", n_cases=2, labels=("liver", "spleen", "kidney"), shape=SMALL, **extra):
    block = {"shape_max": list(shape), "datasets": {name: {"role": role, "n_cases": n_cases, "labels": list(labels)}}}
    block.update(extra)
    return block


def load(folder, relative):
    image = nib.load(folder / relative)
    return image, np.asarray(image.dataobj)


def world_centroid(image, mask):
    return nib.affines.apply_affine(image.affine, np.argwhere(mask).mean(axis=0))


# ---------------------------------------------------------------------------------------------
# label spaces


def test_label_space_merges_synonyms_sides_and_overlaps():
    categories, lookup = label_space(["liver", "liver tumor", "kidney", "postcava"])
    assert categories == {"liver": [1, 2], "liver tumor": [2], "kidney": [3], "postcava": [4]}
    # Both kidneys and both kidney tumours share the single "kidney" value.
    for t in (Tissue.KIDNEY_LEFT, Tissue.KIDNEY_RIGHT_MEDULLA, Tissue.KIDNEY_LEFT_TUMOR):
        assert lookup[t] == 3
    assert lookup[Tissue.LIVER_TUMOR] == 2 and lookup[Tissue.LIVER_VESSEL] == 1
    assert lookup[Tissue.IVC] == 4 and lookup[Tissue.SPLEEN] == 0 and lookup[Tissue.AIR] == 0

    sides, lookup = label_space(["left kidney", "right kidney", "kidney tumor"])
    left, right, tumor = (set(sides[k]) for k in ("left kidney", "right kidney", "kidney tumor"))
    assert not left & right and tumor <= left | right and len(tumor & left) == len(tumor & right) == 1
    assert lookup[Tissue.KIDNEY_LEFT_TUMOR] in left and lookup[Tissue.KIDNEY_RIGHT_TUMOR] in right

    lesions, _ = label_space(["liver tumor", "kidney tumor"])
    assert lesions == {"liver tumor": [1], "kidney tumor": [2]}


def test_unknown_and_duplicate_label_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="'gizzard'.*supported: .*liver") as error:
        synthesize_dataset("ds", tmp_path / "ds", 1, params("ds", labels=["liver", "gizzard"]))
    assert "synth.datasets.ds" in str(error.value)
    assert "postcava" in supported_categories()
    with pytest.raises(ValueError, match="listed twice"):
        synthesize_dataset("ds", tmp_path / "ds", 1, params("ds", labels=["liver", "Liver"]))
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p, "'missing' is not in synth.datasets"),
        (lambda p: p["datasets"]["ds"].update(role="test"), "synth.datasets.ds.role: 'test' is not one of"),
        (lambda p: p["datasets"]["ds"].update(n_cases=0), "synth.datasets.ds.n_cases: 0 is less than the minimum of 1"),
        (lambda p: p["datasets"]["ds"].update(labels=[]), "needs at least one label"),
        (lambda p: p["datasets"]["ds"].update(role="unlabelled"), "unlabelled dataset cannot list labels"),
        (lambda p: p.update(shape_max=[8, 64, 64]), "synth.shape_max.0: 8 is less than the minimum of 16"),
        (lambda p: p.update(orientations=["XYZ"]), "synth.orientations.0: 'XYZ' is not one of"),
        (lambda p: p.update(colour="red"), "unknown key"),
        (lambda p: p["datasets"]["ds"].update(domain="venous"), "synth.datasets.ds.domain: 'venous' is not one of"),
        (lambda p: p["datasets"]["ds"].update(shape_max=[8, 64, 64]), "synth.datasets.ds.shape_max.0: 8 is less"),
    ],
)
def test_bad_settings_raise_clear_errors(tmp_path, mutate, message):
    block = params("ds")
    mutate(block)
    name = "missing" if "missing" in message else "ds"
    with pytest.raises(ValueError, match=message):
        synthesize_dataset(name, tmp_path / "out", 1, block)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the written dataset


def test_dataset_folder_is_complete_and_labels_match_categories(tmp_path):
    labels = ["liver", "liver tumor", "spleen", "left kidney", "right kidney", "kidney tumor", "postcava"]
    out = synthesize_dataset("abd", tmp_path / "abd", 7, params("abd", n_cases=3, labels=labels), progress=False)
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["name"] == "abd" and meta["role"] == "train" and meta["modality"] == "CT"
    assert list(meta["categories"]) == labels
    assert [c["id"] for c in meta["cases"]] == ["case_000", "case_001", "case_002"]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"case_00{i}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "images", "labels"]
    assert [p.name for p in tmp_path.iterdir()] == ["abd"]  # no temporary sibling left

    categories = {name: set(values) for name, values in meta["categories"].items()}
    all_values = set().union(*categories.values())
    assert categories["liver tumor"] < categories["liver"]
    assert categories["kidney tumor"] <= categories["left kidney"] | categories["right kidney"]
    assert not categories["left kidney"] & categories["right kidney"]
    lesion_cases = 0
    for case in meta["cases"]:
        image, hu = load(out, case["image"])
        label_image, label = load(out, case["label"])
        assert hu.dtype == np.int16 and label.dtype == np.uint8 and hu.shape == label.shape
        np.testing.assert_allclose(image.affine, label_image.affine)
        assert set(np.unique(label)) <= all_values | {0}
        masks = {name: np.isin(label, sorted(values)) for name, values in categories.items()}
        for organ in ("liver", "spleen", "left kidney", "right kidney", "postcava"):
            assert masks[organ].sum() > 20, f"{case['id']}: {organ} missing"
        lesion_cases += bool(masks["liver tumor"].any() or masks["kidney tumor"].any())
        # Anatomical sides in world (RAS+) coordinates: +x is the patient's right.
        liver_x = world_centroid(image, masks["liver"])[0]
        spleen_x = world_centroid(image, masks["spleen"])[0]
        assert liver_x > spleen_x
        assert world_centroid(image, masks["right kidney"])[0] > world_centroid(image, masks["left kidney"])[0]
    assert lesion_cases == 3  # a dataset labelling lesions has at least one per case


def test_lesion_only_dataset_labels_only_lesions(tmp_path):
    out = synthesize_dataset(
        "les", tmp_path / "les", 3, params("les", n_cases=3, labels=["liver tumor", "kidney tumor"]), progress=False
    )
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["categories"] == {"liver tumor": [1], "kidney tumor": [2]}
    for case in meta["cases"]:
        _, label = load(out, case["label"])
        values = set(np.unique(label)) - {0}
        assert values and values <= {1, 2}
        # Lesions are small: far less than a liver's worth of voxels.
        assert (label > 0).mean() < 0.05


def test_unlabelled_dataset_has_images_only(tmp_path):
    out = synthesize_dataset(
        "u", tmp_path / "u", 3, params("u", role="unlabelled", labels=[], n_cases=2), progress=False
    )
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["role"] == "unlabelled" and meta["categories"] == {}
    assert [c["label"] for c in meta["cases"]] == [None, None]
    assert not (out / "labels").exists()


def test_deterministic_per_seed_dataset_and_case(tmp_path):
    block = params("d", n_cases=2)
    first = synthesize_dataset("d", tmp_path / "a", 11, block, progress=False)
    again = synthesize_dataset("d", tmp_path / "b", 11, params("d", n_cases=3), progress=False)
    other_seed = synthesize_dataset("d", tmp_path / "c", 12, block, progress=False)
    for relative in ("images/case_001.nii.gz", "labels/case_001.nii.gz"):
        image_a, a = load(first, relative)
        image_b, b = load(again, relative)  # case 1 does not depend on how many cases follow
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(image_a.affine, image_b.affine)
    _, a = load(first, "images/case_000.nii.gz")
    _, c = load(other_seed, "images/case_000.nii.gz")
    assert a.shape != c.shape or not np.array_equal(a, c)
    _, case0 = load(first, "images/case_000.nii.gz")
    _, case1 = load(first, "images/case_001.nii.gz")
    assert case0.shape != case1.shape or not np.array_equal(case0, case1)


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return make_phantom(*args, **kwargs)

    monkeypatch.setattr(synth_dataset, "make_phantom", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize_dataset("d", tmp_path / "d", 1, params("d", n_cases=3), progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("shape_max", [(24, 48, 64), (40, 64, 48), (16, 32, 32)])
def test_shape_limits_spacing_and_fov(shape_max):
    for index, domain in enumerate((TRAIN, EXTERNAL)):
        phantom = make_phantom(case_rng(5, "geo", index), domain, shape_max)
        assert all(n <= m for n, m in zip(phantom.hu.shape, shape_max))
        assert phantom.hu.shape == phantom.tissue.shape
        # Columns of the canonical affine are the voxel sizes along (d, h, w).
        np.testing.assert_allclose(np.linalg.norm(phantom.affine[:3, :3], axis=0), phantom.spacing)
        assert phantom.spacing[0] >= min(domain.slice_mm) - 1e-6
        # The whole trunk lies inside the field of view: nothing but air/couch on the in-plane border.
        border = np.concatenate(
            [phantom.tissue[:, :, 0], phantom.tissue[:, :, -1], phantom.tissue[:, 0, :], phantom.tissue[:, -1, :]],
            axis=1,
        )
        assert np.isin(border, (Tissue.AIR, Tissue.TABLE)).all()


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_nifti_affine_matches_header_zooms_and_world_positions(tmp_path, orientation):
    phantom = make_phantom(case_rng(2, "nifti", 0), TRAIN, SMALL)
    image = to_nifti(phantom.hu, phantom.affine, orientation)
    nib.save(image, tmp_path / "x.nii.gz")
    loaded = nib.load(tmp_path / "x.nii.gz")
    assert nib.aff2axcodes(loaded.affine) == tuple(orientation)
    np.testing.assert_allclose(loaded.header.get_zooms()[:3], np.linalg.norm(loaded.affine[:3, :3], axis=0), rtol=1e-5)
    np.testing.assert_allclose(sorted(loaded.header.get_zooms()[:3]), sorted(phantom.spacing), rtol=1e-5)
    assert int(loaded.header["sform_code"]) == 1 and int(loaded.header["qform_code"]) == 1
    # Every voxel keeps its world position: compare one voxel through both affines.
    data = np.asarray(loaded.dataobj)
    d, h, w = (n // 3 for n in phantom.hu.shape)
    world = phantom.affine @ np.array([d, h, w, 1.0])
    ijk = np.rint(np.linalg.solve(loaded.affine, world)[:3]).astype(int)
    assert data[tuple(ijk)] == phantom.hu[d, h, w]
    try:
        from segvol.io import read_image
    except ImportError:  # the reader belongs to segvol.io; its own tests cover it
        return
    canonical = read_image(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(canonical.array, phantom.hu)
    np.testing.assert_allclose(canonical.affine, phantom.affine, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# appearance


@pytest.fixture(scope="module")
def full_size_phantoms():
    require = ("liver tumor", "kidney tumor")
    return {
        role: make_phantom(case_rng(2023, f"hu_{role}", 0), DOMAINS[role], (96, 160, 160), require)
        for role in ("train", "external")
    }


# Independent clinical reference ranges (median HU inside the tissue), not the generator's table.
EXPECTED_MEDIAN_HU = {
    (Tissue.FAT,): (-130, -60),
    (Tissue.MUSCLE,): (20, 80),
    (Tissue.LIVER,): (60, 135),
    (Tissue.SPLEEN,): (80, 160),
    (Tissue.KIDNEY_LEFT, Tissue.KIDNEY_RIGHT): (130, 240),
    (Tissue.AORTA,): (150, 250),
    (Tissue.IVC,): (140, 250),
    (Tissue.PANCREAS,): (60, 140),
    (Tissue.LUNG_LEFT, Tissue.LUNG_RIGHT): (-920, -700),
    (Tissue.VERTEBRA, Tissue.VERTEBRA_CORTEX): (250, 1200),
    (Tissue.GALLBLADDER,): (-20, 45),
}


@pytest.mark.parametrize("role", ["train", "external"])
def test_tissue_hu_inside_labels(full_size_phantoms, role):
    phantom = full_size_phantoms[role]
    for tissues, (low, high) in EXPECTED_MEDIAN_HU.items():
        inside = np.isin(phantom.tissue, tissues)
        assert inside.sum() > 30, f"{role}: {tissues[0].name} missing"
        median = float(np.median(phantom.hu[inside]))
        assert low <= median <= high, f"{role}: {tissues[0].name} median {median} HU outside [{low}, {high}]"
    bone = np.isin(phantom.tissue, (Tissue.VERTEBRA_CORTEX, Tissue.RIB))
    assert np.percentile(phantom.hu[bone], 90) > 500
    air = phantom.tissue == Tissue.AIR
    assert -1030 <= np.median(phantom.hu[air]) <= -970
    # Subcutaneous fat ring: just inside the skin along the middle row, fat comes before muscle.
    d = phantom.hu.shape[0] // 2
    row = phantom.tissue[d, phantom.hu.shape[1] // 2]
    first_inside = np.flatnonzero(np.isin(row, (Tissue.FAT, Tissue.MUSCLE)))[0]
    assert row[first_inside] == Tissue.FAT
    # Lesions differ from their host organ.
    for tumor, host in (
        (Tissue.LIVER_TUMOR, (Tissue.LIVER,)),
        ((Tissue.KIDNEY_LEFT_TUMOR, Tissue.KIDNEY_RIGHT_TUMOR), (Tissue.KIDNEY_LEFT, Tissue.KIDNEY_RIGHT)),
    ):
        lesion = np.isin(phantom.tissue, tumor)
        if lesion.sum() > 30:
            gap = abs(np.median(phantom.hu[lesion]) - np.median(phantom.hu[np.isin(phantom.tissue, host)]))
            assert gap > 10


def test_lungs_top_kidneys_posterior_beside_spine(full_size_phantoms):
    tissue = full_size_phantoms["train"].tissue
    z = lambda t: np.argwhere(np.isin(tissue, t)).mean(axis=0)  # noqa: E731  (d, h, w) centroid
    lungs, liver = z((Tissue.LUNG_LEFT, Tissue.LUNG_RIGHT)), z((Tissue.LIVER,))
    kidney_l, kidney_r, spine = z((Tissue.KIDNEY_LEFT,)), z((Tissue.KIDNEY_RIGHT,)), z((Tissue.VERTEBRA,))
    aorta, ivc, pancreas = z((Tissue.AORTA,)), z((Tissue.IVC,)), z((Tissue.PANCREAS,))
    assert lungs[0] > liver[0]  # lungs superior
    assert kidney_l[2] < spine[2] < kidney_r[2]  # w grows towards the patient's right
    assert kidney_l[1] < pancreas[1] and kidney_r[1] < pancreas[1]  # kidneys posterior
    assert aorta[1] > spine[1] and aorta[2] < spine[2] < ivc[2]  # aorta anterior-left, IVC right


def test_external_population_is_shifted():
    rng_train, rng_external = np.random.default_rng(0), np.random.default_rng(1)
    train = np.array([draw_tissue_hu(rng_train, TRAIN) for _ in range(400)])
    external = np.array([draw_tissue_hu(rng_external, EXTERNAL) for _ in range(400)])
    shift = external.mean(axis=0) - train.mean(axis=0)
    assert -30 < shift[Tissue.LIVER] < -8 and 8 < shift[Tissue.SPLEEN] < 30
    assert 8 < shift[Tissue.KIDNEY_LEFT] < 35
    # Kidneys of one case enhance alike, tumours follow their host's draw.
    assert np.array_equal(train[:, Tissue.KIDNEY_LEFT], train[:, Tissue.KIDNEY_RIGHT])
    # Scanner noise: the air outside the body is noisier on external scanners.
    noise = {}
    for domain in (TRAIN, EXTERNAL):
        stds = []
        for index in range(2):
            phantom = make_phantom(case_rng(9, f"noise_{domain.name}", index), domain, SMALL)
            far_air = phantom.hu[:, : phantom.hu.shape[1] // 8][
                phantom.tissue[:, : phantom.hu.shape[1] // 8] == Tissue.AIR
            ]
            stds.append(far_air.std())
        noise[domain.name] = stds
    assert min(noise["external"]) > max(noise["train"])


def test_a_dataset_can_have_its_own_scanner_population_and_size(tmp_path):
    # Datasets that differ in appearance and size are what the demo's scaling and zoom ablations need:
    # the arterial population shows a bright aorta and an unenhanced IVC in the written images.
    block = params("art", n_cases=1, labels=["aorta", "inferior vena cava"])
    block["datasets"]["art"].update(domain="arterial", shape_max=[48, 96, 80])
    block["datasets"]["ven"] = {"role": "train", "n_cases": 1, "labels": ["aorta", "inferior vena cava"]}
    medians = {}
    for name in ("art", "ven"):
        out = synthesize_dataset(name, tmp_path / name, 5, block, progress=False)
        _, image = load(out, "images/case_000.nii.gz")
        _, label = load(out, "labels/case_000.nii.gz")
        limit = [48, 96, 80] if name == "art" else SMALL  # (slices, rows, cols); NIfTI is (cols, rows, slices)
        assert all(n <= m for n, m in zip(image.shape, limit[::-1])), (name, image.shape)
        if name == "art":
            assert image.shape[0] > SMALL[2] and image.shape[2] > SMALL[0], image.shape
        medians[name] = [float(np.median(image[label == value])) for value in (1, 2)]
        description = json.loads((out / "dataset.json").read_text())
        assert (description["synth"]["shape_max"] == [48, 96, 80]) == (name == "art")
    (aorta_art, ivc_art), (aorta_ven, ivc_ven) = medians["art"], medians["ven"]
    assert aorta_art > 260 and aorta_art > aorta_ven + 80, medians
    assert ivc_art < 130 and aorta_art - ivc_art > 150 > aorta_ven - ivc_ven, medians


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_writes_dataset_and_reports_errors(tmp_path):
    # The subcommand module directly: `segvol.cli.main` imports every stage (slow), and its
    # ValueError -> exit 2 conversion is tested with the dispatcher.
    import argparse

    from segvol.synth import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    block = json.dumps(params("cli", n_cases=1))
    args = parser.parse_args(
        ["--dataset", "cli", "--out", str(tmp_path / "cli"), "--seed", "3", "--params", block, "--quiet"]
    )
    assert cli.run(args) == 0
    assert (tmp_path / "cli" / "dataset.json").is_file()
    assert "segvol synth --dataset" in cli.__doc__  # --help shows an example
    bad = json.dumps(params("cli", labels=["liver", "unicorn"]))
    with pytest.raises(ValueError, match="unicorn.*supported"):
        cli.run(parser.parse_args(["--dataset", "cli", "--out", str(tmp_path / "bad"), "--params", bad]))
    with pytest.raises(ValueError, match="not valid JSON"):
        cli.run(parser.parse_args(["--dataset", "cli", "--out", str(tmp_path / "bad"), "--params", "{oops"]))
    assert not (tmp_path / "bad").exists()
