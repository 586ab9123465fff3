"""The overlap audit: an external test case that is also a training case is caught."""

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

from segvol.cli import main
from segvol.evaluate.overlap import audit, identity


def scan(seed, shape=(24, 40, 40)):
    """A smooth random 'body' inside air: each seed is another patient."""
    rng = np.random.default_rng(seed)
    body = ndimage.gaussian_filter(rng.random(shape), 3)
    body = (body - body.min()) / (body.max() - body.min())
    image = np.zeros(shape, np.float32)
    image[2:-2, 3:-3, 3:-3] = 0.3 + 0.7 * body[2:-2, 3:-3, 3:-3]
    return image


def write(path, images, dataset, role):
    root = zarr.open_group(str(path), mode="w")
    cases = [f"case_{i:03d}" for i in range(len(images))]
    for case, image in zip(cases, images):
        group = root.create_group(case)
        group.create_array("image", data=image)
        labels = (image > 0.7)[None].astype(np.uint8)
        group.create_array("labels", data=labels)
        group.attrs["spacing"] = [2.0, 1.0, 1.0]
    root.attrs.update(
        {
            "dataset": dataset,
            "role": role,
            "modality": "CT",
            "categories": ["liver"],
            "cases": cases,
            "split": {"train": cases, "test": [], "seed": 0, "test_fraction": 0.2},
            "format_version": 1,
        }
    )
    return str(path)


def test_identical_and_re_exported_scans_are_flagged_and_others_are_not():
    training = [identity("train", f"t{i}", scan(i)) for i in range(6)]
    re_exported = scan(3)[1:, :-1, 2:] * 0.95 + np.random.default_rng(9).normal(0, 0.005, (23, 39, 38))
    external = [
        identity("ext", "copy", scan(2)),
        identity("ext", "re_exported", re_exported.astype(np.float32)),
        identity("ext", "new", scan(100)),
        identity("ext", "new2", scan(101)),
    ]
    table = audit(external, training)
    found = {(row.external_case, row.train_case, row.kind) for row in table.itertuples()}
    assert found == {("copy", "t2", "identical"), ("re_exported", "t3", "near-duplicate")}
    assert list(table["kind"]) == ["identical", "near-duplicate"]


def test_audit_command_fails_on_a_leak_and_writes_the_table_otherwise(tmp_path, capsys):
    train = write(tmp_path / "abdomen_a.zarr", [scan(i) for i in range(3)], "abdomen_a", "train")
    clean = write(tmp_path / "ext_clean.zarr", [scan(50), scan(51)], "ext_clean", "external")
    leaky = write(tmp_path / "ext_leaky.zarr", [scan(60), scan(1)], "ext_leaky", "external")
    out = tmp_path / "audit.csv"
    assert main(["evaluate", "overlap", "--external", clean, "--train", train, "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 0
    out.unlink()
    assert main(["evaluate", "overlap", "--external", clean, leaky, "--train", train, "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert "ext_leaky/case_001 = abdomen_a/case_001" in message and "\n" not in message.strip()
    assert not out.exists()


@pytest.mark.parametrize("flat", [0.0, 0.5])
def test_flat_images_do_not_break_the_fingerprint(flat):
    image = np.full((8, 8, 8), flat, np.float32)
    item = identity("d", "c", image)
    assert np.all(np.isfinite(item.fingerprint))
    table = audit([item], [identity("t", "c", image.copy())])
    assert list(table["kind"]) == ["identical"]
