"""`segvol.infer.volume.NormalizedVolume`: HU normalized when read give the up-front normalization, bit for bit."""

import numpy as np
import pytest
import torch

from segvol.infer import Prompt, segment
from segvol.infer.volume import NormalizedVolume
from segvol.io.intensity import foreground_normalize
from tests.stand_in_models import MixingModel

torch.set_num_threads(1)


def ct(shape=(22, 70, 60), dtype=np.int32, seed=0):
    """Air around a body of soft tissue and bone; HU values an int16 holds."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, dtype)
    hu[2:-3, 5:-4, 4:-6] = rng.integers(-200, 1500, (shape[0] - 5, shape[1] - 9, shape[2] - 10))
    return hu


def test_reads_equal_the_whole_volume_normalized():
    hu = ct()
    whole = torch.from_numpy(foreground_normalize(hu))
    volume = NormalizedVolume.compact(hu)
    assert volume.hu.dtype == np.int16 and volume.shape == whole.shape  # int32 HU kept at half the bytes
    np.testing.assert_array_equal(volume[3:9, :, 7:40], whole[3:9, :, 7:40])
    crop = volume.crop((slice(2, 19), slice(5, 66), slice(4, 54)))
    index = torch.tensor([0, 3, 3, 16])
    np.testing.assert_array_equal(crop.index_select(0, index), whole[2:19, 5:66, 4:54].index_select(0, index))
    np.testing.assert_array_equal(crop.index_select(2, index), whole[2:19, 5:66, 4:54].index_select(2, index))
    assert NormalizedVolume.compact(ct() * 30).hu.dtype == np.int32  # beyond int16: kept as stored


@pytest.mark.parametrize("mode", ["zoom", "window", "resize"])
def test_segmenting_normalized_on_read_equals_normalized_up_front(mode):
    hu = ct()
    prompts = [
        Prompt(text="liver"),
        Prompt(box=(4, 10, 8, 14, 50, 40), points=[(9, 30, 20)], point_labels=[1]),
        Prompt(points=[(6, 40, 30), (12, 20, 20)], point_labels=[1, 0]),
    ]
    lazy = NormalizedVolume.compact(hu)
    for prompt in prompts:  # the volume's foreground box is found once, then reused
        expected = segment(MixingModel((8, 32, 32)), torch.from_numpy(foreground_normalize(hu)), [prompt], mode=mode)
        np.testing.assert_array_equal(segment(MixingModel((8, 32, 32)), lazy, [prompt], mode=mode), expected)
    assert lazy.foreground is not None


def test_constant_volume_is_refused():
    with pytest.raises(ValueError, match="constant"):
        NormalizedVolume.compact(np.full((4, 5, 6), 7, np.int16))
