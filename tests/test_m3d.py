"""M3D-Seg release format: image.npy + sparse mask_(C, X, Y, Z).npz + <code>/<code>.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse

from segvol.download.layouts import describe
from segvol.io.m3d import (
    mask_file_name,
    mask_shape,
    read_m3d_channels,
    read_m3d_image,
    read_m3d_mask,
    write_m3d_case,
)


def _case(rng, shape=(5, 6, 7), channels=3):
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    # Disjoint channels, as the release builds them from a label map (channel c <-> value c+1).
    label_map = rng.integers(0, channels + 1, size=shape)
    stack = np.stack([(label_map == c + 1) for c in range(channels)]).astype(np.uint8)
    return image, stack, label_map


def test_round_trip_against_independent_encoding(tmp_path):
    rng = np.random.default_rng(0)
    image, stack, label_map = _case(rng)
    image_path, mask_path = write_m3d_case(tmp_path / "case1", image, stack)
    assert mask_path.name == "mask_(3, 5, 6, 7).npz" == mask_file_name(stack.shape)
    assert mask_shape(mask_path) == (3, 5, 6, 7)
    # The stored matrix is (C, X*Y*Z), row-major flattening of (X, Y, Z), as the release stores it.
    matrix = scipy.sparse.load_npz(mask_path)
    assert matrix.shape == (3, 5 * 6 * 7)
    np.testing.assert_array_equal(matrix.toarray(), stack.reshape(3, -1))

    read_image, affine = read_m3d_image(image_path)
    np.testing.assert_array_equal(read_image, image[0])
    np.testing.assert_array_equal(affine, np.eye(4))
    channels, _ = read_m3d_channels(mask_path)
    np.testing.assert_array_equal(channels, stack)
    labels, affine = read_m3d_mask(mask_path)
    np.testing.assert_array_equal(labels, label_map)
    assert labels.shape == (5, 6, 7) and np.array_equal(affine, np.eye(4))


def test_bad_files_are_clear_errors(tmp_path):
    rng = np.random.default_rng(1)
    image, stack, _ = _case(rng)
    stack[1, 0, 0, 0] = stack[2, 0, 0, 0] = 1
    _, mask_path = write_m3d_case(tmp_path / "overlap", image, stack)
    with pytest.raises(ValueError, match=r"channels \[1, 2\] overlap"):
        read_m3d_mask(mask_path)
    np.testing.assert_array_equal(read_m3d_channels(mask_path)[0], stack)

    wrong = tmp_path / "mask_(3, 5, 6, 8).npz"
    wrong.write_bytes(mask_path.read_bytes())
    with pytest.raises(ValueError, match="does not match the name's shape"):
        read_m3d_mask(wrong)
    with pytest.raises(ValueError, match="not an M3D-Seg mask name"):
        mask_shape(tmp_path / "labels.npz")
    nan_image = tmp_path / "nan.npy"
    np.save(nan_image, np.full((1, 2, 2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        read_m3d_image(nan_image)
    four_d = tmp_path / "4d.npy"
    np.save(four_d, np.zeros((2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(1, X, Y, Z\)"):
        read_m3d_image(four_d)
    with pytest.raises(FileNotFoundError):
        read_m3d_image(tmp_path / "absent.npy")


def test_release_folder_to_raw_contract(tmp_path):
    rng = np.random.default_rng(2)
    code_dir = tmp_path / "0005"
    entries = []
    for case in ("1", "2", "3"):
        image, stack, _ = _case(rng, shape=(4, 4, 3), channels=2)
        image_path, mask_path = write_m3d_case(code_dir / case, image, stack)
        entries.append({"image": f"0005/{case}/image.npy", "label": f"0005/{case}/{mask_path.name}"})
    (code_dir / "0005.json").write_text(
        json.dumps(
            {
                "name": "KiPA22",
                "labels": {"0": "background", "1": "renal vein", "2": "kidney"},
                "train": entries[:2],
                "test": entries[2:],
            }
        )
    )
    entry = {"role": "train", "modality": "CT", "layout": {"kind": "m3d", "code": "0005"}, "labels": None}
    document = describe(tmp_path, "KiPA22", entry)
    assert document["categories"] == {"renal vein": [1], "kidney": [2]}
    assert [c["id"] for c in document["cases"]] == ["1", "2", "3"]
    for case in document["cases"]:
        labels, _ = read_m3d_mask(tmp_path / case["label"])
        channels, _ = read_m3d_channels(tmp_path / case["label"])
        for name, values in document["categories"].items():
            channel = values[0] - 1
            np.testing.assert_array_equal(labels == values[0], channels[channel].astype(bool), err_msg=name)

    # A json naming more labels than the masks have channels is refused.
    meta = json.loads((code_dir / "0005.json").read_text(encoding="utf-8"))
    meta["labels"]["3"] = "renal artery"
    (code_dir / "0005.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="2 channels but"):
        describe(tmp_path, "KiPA22", entry)
