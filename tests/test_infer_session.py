"""`segvol.infer.session.Session`: incremental prompts give the one-shot result, embeddings are reused."""

import numpy as np
import pytest
import torch

from segvol.infer import Prompt, segment
from segvol.infer.session import Session
from tests.stand_in_models import BoxModel, MixingModel

torch.set_num_threads(1)


def volume(shape=(20, 70, 60), seed=0):
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    data[2:-2, 3:-3, 3:-3] = rng.uniform(0.1, 1.0, (shape[0] - 4, shape[1] - 6, shape[2] - 6))
    return torch.from_numpy(data)


@pytest.mark.parametrize("mode", ["zoom", "window"])
def test_interactive_edits_equal_the_one_shot_call(mode):
    model = MixingModel((8, 32, 32))
    image = volume()
    session = Session(model, image, mode=mode)
    session.add_text("liver")
    first = session.logits("liver")
    np.testing.assert_array_equal(first, segment(MixingModel((8, 32, 32)), image, [Prompt(text="liver")], mode=mode)[0])
    session.set_box("liver", (4, 10, 8, 14, 50, 40))
    session.add_point("liver", (9, 30, 20))
    wrong = session.add_point("liver", (9, 60, 50))
    session.add_point("liver", (5, 12, 12), positive=False)
    session.logits("liver")
    session.remove_point("liver", wrong)
    edited = session.logits("liver")
    one_shot = segment(MixingModel((8, 32, 32)), image, [Prompt(
        text="liver", box=(4, 10, 8, 14, 50, 40), points=[(9, 30, 20), (5, 12, 12)], point_labels=[1, 0])],
        mode=mode)[0]
    np.testing.assert_array_equal(edited, one_shot)
    assert not torch.equal(edited, first)
    session.remove_box("liver")
    session.remove_text("liver")
    np.testing.assert_array_equal(session.logits("liver"), segment(
        MixingModel((8, 32, 32)), image, [Prompt(points=[(9, 30, 20), (5, 12, 12)], point_labels=[1, 0])],
        mode=mode)[0])
    session.remove("liver")
    with pytest.raises(ValueError, match="no category 'liver'"):
        session.logits("liver")


def test_image_embeddings_are_computed_once_per_view():
    model = BoxModel((8, 32, 32))
    session = Session(model, volume(), mode="zoom")
    session.set_box("a", (4, 10, 8, 14, 50, 40))
    session.mask("a")
    encoded = model.images_encoded
    assert encoded >= 2  # zoom-out view + at least one window
    session.add_point("a", (9, 30, 20))
    session.add_text("a", "liver")
    session.mask("a")
    session.remove_point("a", 0)
    mask = session.mask("a")
    assert model.images_encoded == encoded  # edits cost decoder passes only
    assert mask[4:15, 10:51, 8:41].all() and mask.sum() == 11 * 41 * 33
