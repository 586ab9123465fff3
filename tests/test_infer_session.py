"""`segvol.infer.session.Session`: incremental prompts give the one-shot result, embeddings are reused."""

import copy

import numpy as np
import pytest
import torch

from segvol.infer import OUTSIDE_LOGIT, Prompt, segment
from segvol.infer.geometry import box_slices
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
    one_shot = segment(
        MixingModel((8, 32, 32)),
        image,
        [Prompt(text="liver", box=(4, 10, 8, 14, 50, 40), points=[(9, 30, 20), (5, 12, 12)], point_labels=[1, 0])],
        mode=mode,
    )[0]
    np.testing.assert_array_equal(edited, one_shot)
    assert not torch.equal(edited, first)
    session.remove_box("liver")
    session.remove_text("liver")
    np.testing.assert_array_equal(
        session.logits("liver"),
        segment(
            MixingModel((8, 32, 32)), image, [Prompt(points=[(9, 30, 20), (5, 12, 12)], point_labels=[1, 0])], mode=mode
        )[0],
    )
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


# -- a click answered fast: decoder outputs of unchanged windows are reused -------------------


def windows_of(session):
    """The zoom-in windows a session has encoded: (start, size) in crop voxels."""
    return [(key[1], key[2]) for key in session.embeddings if key[0] == "window"]


def holds(start, size, point):
    return all(0 <= p - s < n for s, n, p in zip(start, size, point))


class Counted:
    """Counts encoder windows and decoder items of a model, per call (wraps its bound methods)."""

    def __init__(self, model):
        self.model, self.encoded, self.decoded = model, 0, 0
        encode, decode = model.encode_image, model.decode

        def counted_encode(image):
            self.encoded += image.shape[0]
            return encode(image)

        def counted_decode(embedding, **prompts):
            self.decoded += next(
                v.shape[0]
                for v in (
                    prompts.get("text"),
                    prompts.get("boxes"),
                    (prompts.get("points") or (None,))[0],
                    prompts.get("mask_prompt"),
                )
                if v is not None
            )
            return decode(embedding, **prompts)

        model.encode_image, model.decode = counted_encode, counted_decode

    def restore(self):
        del self.model.encode_image, self.model.decode  # the class's methods again

    def reset(self):
        self.encoded = self.decoded = 0


def test_a_click_inside_encoded_windows_decodes_only_the_windows_it_lies_in():
    image = volume()
    model = BoxModel((8, 32, 32))  # a box prompt's logits ignore points: the coarse view does not move
    count = Counted(model)
    session = Session(model, image)
    box = (4, 10, 8, 14, 50, 40)
    session.set_box("a", box)
    first = session.mask("a")
    windows = windows_of(session)
    assert count.encoded == 1 + len(windows) and count.decoded == 1 + len(windows) and len(windows) >= 4
    crop_start = np.array([2, 3, 3])  # the volume's foreground starts there
    click = (5, 12, 10)
    touched = [w for w in windows if holds(w[0], w[1], np.array(click) - crop_start)]
    assert 0 < len(touched) < len(windows)
    count.reset()
    session.add_point("a", click)
    clicked = session.mask("a")
    assert count.encoded == 0 and count.decoded == 1 + len(touched)
    np.testing.assert_array_equal(clicked, first)
    # the same prompts again cost nothing; removing the click comes back to the first decodes
    count.reset()
    session.mask("a")
    assert count.decoded == 0
    session.remove_point("a", 0)
    np.testing.assert_array_equal(session.mask("a"), first)
    assert count.encoded == 0 and count.decoded == 1 + len(touched)


def test_decoder_outputs_are_kept_per_object_and_dropped_with_it():
    image = volume()
    session = Session(BoxModel((8, 32, 32)), image)
    session.set_box("a", (4, 10, 8, 14, 50, 40))
    session.set_box("b", (3, 40, 30, 12, 60, 50))
    session.mask("a")
    session.mask("b")
    held = {owner: set(keys) for owner, keys in session.decodes.held.items()}
    assert set(held) == {"a", "b"} and set(session.decodes.entries) == held["a"] | held["b"]
    session.add_point("a", (5, 12, 10))
    session.mask("a")
    assert session.decodes.held["b"] == held["b"] and session.decodes.held["a"] != held["a"]
    assert set(session.decodes.entries) == session.decodes.held["a"] | held["b"]
    session.remove("a")
    assert set(session.decodes.entries) == held["b"]


@pytest.fixture(scope="module")
def tiny_segvol():
    from segvol.model import build_model, model_config

    torch.manual_seed(0)
    model = build_model(model_config("tiny")).eval()
    with torch.no_grad():  # a fresh decoder barely reacts to prompts: widen the prompt tokens
        for embedding in model.prompt_encoder.point_embeddings:
            embedding.weight.normal_(0, 1)
    return model


def ct_like(shape=(40, 150, 140), seed=1):
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    data[2:-3, 6:-5, 4:-6] = rng.uniform(0.05, 1.0, (shape[0] - 5, shape[1] - 11, shape[2] - 10))
    data[10:30, 40:100, 30:90] += 0.5  # an organ
    return torch.from_numpy(np.clip(data, 0, 1))


@pytest.mark.parametrize(
    "start",
    [
        dict(shape=(40, 150, 140), box=(8, 35, 25, 33, 105, 95), clicks=[(14, 50, 40), (26, 90, 80), (20, 60, 45)]),
        dict(shape=(36, 100, 90), points=[(20, 50, 45)], clicks=[(14, 40, 30), (26, 70, 60), (20, 55, 40)]),
    ],
    ids=["box", "points"],
)
def test_refined_object_equals_a_one_shot_segmentation_with_the_same_prompts(tiny_segvol, start):
    # with points only, every window's box comes from the coarse view, which each click moves
    image = ct_like(start["shape"])
    count = Counted(tiny_segvol)
    session = Session(tiny_segvol, image)
    if "box" in start:
        session.set_box("organ", start["box"])
    for point in start.get("points", []):
        session.add_point("organ", point)
    session.logits("organ")
    for point, positive in zip(start["clicks"], (True, False, True)):
        before = set(windows_of(session))
        count.reset()
        session.add_point("organ", point, positive=positive)
        refined = session.logits("organ")
        encoded, decoded = count.encoded, count.decoded
        prompt = session.prompt("organ")
        one_shot = segment(
            tiny_segvol, image, [Prompt(box=prompt.box, points=prompt.points, point_labels=prompt.point_labels)]
        )[0]
        torch.testing.assert_close(refined, one_shot, rtol=0, atol=1e-4)
        assert (refined > 0).sum() > 0
        # no encoder pass for windows already seen; at most the zoom-out view and the click's
        # windows decoded when the click stays inside seen windows and a box fixes every window's box
        new = set(windows_of(session)) - before
        assert encoded == len(new)
        if "box" in start and not new:
            crop_start = np.array([2, 6, 4])
            used = {key[0][1:] for key in session.decodes.held["organ"] if key[0][0] == "window"}
            touched = [w for w in used if holds(w[0], w[1], np.array(point) - crop_start)]
            assert decoded == 1 + len(touched)
    count.restore()


# -- an object started from an existing mask ----------------------------------------------------


def organ_mask(shape=(20, 70, 60)):
    mask = np.zeros(shape, bool)
    mask[6:12, 20:40, 15:35] = True
    mask[8:10, 28:32, 22:28] = False  # a hole the model never saw
    return mask


def test_without_a_trained_branch_a_mask_is_the_result_and_clicks_edit_it_nearby():
    from segvol.model.mask_prompt import MASK_LOGIT_LIMIT

    image = volume()
    mask = organ_mask()
    model = BoxModel((8, 32, 32))
    count = Counted(model)
    session = Session(model, image, edit_radius_mm=3.0)  # no spacing: voxels of 1 mm
    session.set_mask("organ", mask.astype(np.uint8))
    logits = session.logits("organ")
    assert count.decoded == 0  # the mask alone needs no model
    np.testing.assert_array_equal(
        logits[6:12, 20:40, 15:35].numpy(), np.where(mask, MASK_LOGIT_LIMIT, -MASK_LOGIT_LIMIT)[6:12, 20:40, 15:35]
    )
    assert (
        logits[~torch.from_numpy(np.pad(np.ones((6, 20, 20), bool), [(6, 8), (20, 30), (15, 25)]))] == OUTSIDE_LOGIT
    ).all()
    # a positive click beside the mask: the box becomes the mask's box grown to the click, the model
    # (BoxModel: the box is the object) decides within 3 voxels of the click, the mask stays elsewhere
    click = (9, 44, 25)
    session.add_point("organ", click)
    edited = session.mask("organ")
    assert count.encoded > 0
    grown = np.zeros(mask.shape, bool)
    grown[6:12, 20:45, 15:35] = True  # (6, 20, 15) .. (11, 44, 34)
    near = np.zeros(mask.shape, bool)
    dd, hh, ww = np.ogrid[:20, :70, :60]
    near[((dd - 9) ** 2 + (hh - 44) ** 2 + (ww - 25) ** 2) <= 9] = True
    np.testing.assert_array_equal(edited, np.where(near, grown, mask))
    assert edited.sum() > mask.sum()
    # a box of the user's own replaces the grown one: near the click the model decides inside it only
    session.set_box("organ", (6, 20, 15, 11, 46, 26))
    user_box = np.zeros(mask.shape, bool)
    user_box[6:12, 20:47, 15:27] = True
    np.testing.assert_array_equal(session.mask("organ"), np.where(near & user_box, True, mask))
    assert (near & ~user_box & ~mask).any()
    # the same prompts again are answered from what is kept
    count.reset()
    session.mask("organ")
    assert count.decoded == 0


def test_set_mask_checks_its_input():
    session = Session(BoxModel((8, 32, 32)), volume())
    with pytest.raises(ValueError, match="not on the image grid"):
        session.set_mask("a", np.ones((20, 70, 59), bool))
    with pytest.raises(ValueError, match="has no voxel"):
        session.set_mask("a", np.zeros((20, 70, 60), bool))
    with pytest.raises(ValueError, match="labels == id"):
        session.set_mask("a", np.full((20, 70, 60), 5, np.int16))


def test_with_a_trained_branch_the_mask_then_the_previous_logits_prompt_every_view(tiny_segvol):
    from segvol.infer.zoom import foreground_box
    from segvol.model.mask_prompt import MASK_LOGIT_LIMIT, attach_mask_prompt

    model = copy.deepcopy(tiny_segvol)
    branch = attach_mask_prompt(model)
    with torch.no_grad():
        branch.downscaling[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    seen = []
    decode = model.decode

    def spy(embedding, **prompts):
        seen.append(prompts.get("mask_prompt"))
        return decode(embedding, **prompts)

    model.decode = spy
    image = ct_like((36, 100, 90))
    mask = np.zeros(image.shape, bool)
    mask[12:26, 35:65, 30:60] = True
    session = Session(model, image)
    session.set_mask("organ", mask)
    np.testing.assert_array_equal(session.mask("organ"), mask)  # the mask alone is the result
    assert not seen

    def views(full_logits):
        """What each view must see of a (D, H, W) mask-prompt volume: zoom-out samples, window crops."""
        crop = foreground_box(image)
        part = full_logits[box_slices(crop)].clamp(-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT)
        zoom_out = torch.nn.functional.interpolate(part[None, None], size=(32, 64, 64), mode="nearest-exact")[0, 0]
        windows = []
        for start, size in {key[0][1:] for key in session.decodes.held["organ"] if key[0][0] == "window"}:
            padded = torch.nn.functional.pad(part, (64, 64, 64, 64, 32, 32), value=-MASK_LOGIT_LIMIT)
            windows.append(padded[tuple(slice(s + p, s + p + n) for s, p, n in zip(start, (32, 64, 64), size))])
        return zoom_out, windows

    def check(expected_volume):
        zoom_out, windows = views(expected_volume)
        got = [m[i, 0].clamp(-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT) for m in seen for i in range(m.shape[0])]
        assert all(m is not None for m in seen) and len(got) == 1 + len(windows)
        assert any(torch.equal(g, zoom_out) for g in got)
        for window in windows:
            assert any(torch.equal(g, window) for g in got)

    session.add_point("organ", (18, 50, 45))
    first = session.logits("organ")
    check(torch.where(torch.from_numpy(mask), MASK_LOGIT_LIMIT, -MASK_LOGIT_LIMIT))
    # the next click is prompted with the previous round's logits, in every view
    seen.clear()
    session.add_point("organ", (20, 40, 70), positive=False)
    second = session.logits("organ")
    check(torch.where(first == OUTSIDE_LOGIT, -MASK_LOGIT_LIMIT, first))
    assert not torch.equal(first, second)
