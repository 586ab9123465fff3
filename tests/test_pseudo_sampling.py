"""Training-side helpers: random segment, tight box, box target with covered neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segvol.pseudo.sampling import box_target, pick_segment, segment_box


def test_pick_segment_numpy_and_torch():
    pseudo = np.zeros((4, 5, 6), np.int32)
    pseudo[0, 0, :3] = 3
    pseudo[1] = 7
    pseudo[3, 4, 5] = 12
    draws = [pick_segment(pseudo, np.random.default_rng(seed)) for seed in range(200)]
    assert set(draws) == {3, 7, 12}  # 0 never, every present id sometimes
    assert max(np.bincount(draws)) < 100  # uniform over ids, not over voxels
    assert pick_segment(pseudo, np.random.default_rng(5)) == pick_segment(pseudo, np.random.default_rng(5))
    tensor = torch.from_numpy(pseudo)
    torch_draws = {pick_segment(tensor, torch.Generator().manual_seed(seed)) for seed in range(100)}
    assert torch_draws == {3, 7, 12}
    assert pick_segment(np.zeros((2, 2, 2), np.int32), np.random.default_rng(0)) == 0
    with pytest.raises(ValueError, match="generator"):
        pick_segment(pseudo, 42)


def test_segment_box():
    mask = np.zeros((6, 7, 8), bool)
    mask[1, 2, 3] = mask[4, 5, 3] = mask[2, 2, 7] = True
    assert segment_box(mask).tolist() == [1, 2, 3, 4, 5, 7]
    assert segment_box(torch.from_numpy(mask)).tolist() == [1, 2, 3, 4, 5, 7]
    assert segment_box(np.zeros((2, 2, 2), bool)).tolist() == [-1] * 6


def test_box_target_takes_segments_mostly_inside_the_box():
    pseudo = np.zeros((10, 20, 20), np.int32)
    pseudo[2:8, 2:12, 2:12] = 1  # chosen: box (2,2,2)-(7,11,11)
    pseudo[3:5, 4:6, 4:6] = 2  # entirely inside (and carved out of 1)
    pseudo[2:8, 11:13, 5:9] = 3  # 24 of 48 voxels inside: 50 %, left out
    pseudo[7:8, 5:9, 5:15] = 4  # cut: columns 5..11 of 5..14 inside: 70 %, left out
    pseudo[2:8, 5:6, 12:13] = 0
    pseudo[3:7, 14:15, 2:12] = 5  # outside the box entirely
    pseudo[2:8, 2:3, 2:3] = 6  # in a corner of the box, fully inside
    pseudo[9, 0:10, 0] = 7  # 0 % inside
    box, target = box_target(pseudo, 1)
    assert box.tolist() == segment_box(pseudo == 1).tolist()
    d0, h0, w0, d1, h1, w1 = box.tolist()
    sizes = np.bincount(pseudo.ravel())
    inside = np.bincount(pseudo[d0 : d1 + 1, h0 : h1 + 1, w0 : w1 + 1].ravel(), minlength=sizes.size)
    expected_ids = {1} | {i for i in range(1, sizes.size) if sizes[i] and inside[i] / sizes[i] > 0.9}
    assert expected_ids == {1, 2, 6}  # the construction is what the comments say
    assert np.array_equal(target, np.isin(pseudo, list(expected_ids)))
    torch_box, torch_target = box_target(torch.from_numpy(pseudo), 1)
    assert torch_box.tolist() == box.tolist() and np.array_equal(torch_target.numpy(), target)
    with pytest.raises(ValueError, match="not present"):
        box_target(pseudo, 99)


def test_box_target_coverage_is_strictly_above_the_limit():
    pseudo = np.zeros((1, 4, 12), np.int32)
    pseudo[0, 0:4, 0:4] = 1  # box rows 0..3, columns 0..3
    pseudo[0, 1, 2:7] = 2  # 2 of its 5 voxels inside the box: 0.4
    assert segment_box(pseudo == 1).tolist() == [0, 0, 0, 0, 3, 3]
    _, target = box_target(pseudo, 1, coverage=0.4)
    assert not target[pseudo == 2].any()  # 0.4 is not > 0.4
    _, target = box_target(pseudo, 1, coverage=0.39)
    assert target[pseudo == 2].all()
