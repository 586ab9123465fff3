"""`segvol.infer.text.release_text_backbone`: the run's names keep their embeddings, the backbone goes."""

import pytest
import torch

from segvol.infer.text import release_text_backbone
from segvol.model import build_model, model_config

torch.set_num_threads(1)


def test_released_backbone_keeps_the_embeddings_of_the_named_texts():
    torch.manual_seed(0)
    model = build_model(model_config("tiny")).eval()
    names = ["liver", "left kidney of the patient"]
    with torch.no_grad():  # one name per call, as segvol predict embeds them
        expected = torch.cat([model.encode_text([name]) for name in names])
    model.text_encoder.clear_cache()  # the release must embed the names itself
    parameters = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.text_encoder.language_model.parameters())
    release_text_backbone(model, [names[1], names[0], names[0]])
    assert sum(p.numel() for p in model.parameters()) == parameters - backbone and backbone > 1_000_000
    model.train().eval()  # the text encoder keeps its backbone in eval mode: the stand-in must allow it
    with torch.no_grad():
        # bit for bit: names embedded in one padded batch would differ in their last bits
        torch.testing.assert_close(torch.cat([model.encode_text([name]) for name in names]), expected, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="released after embedding"):
            model.encode_text(["spleen"])


def test_models_without_our_text_encoder_are_left_alone():
    from tests.stand_in_models import BoxModel

    model = BoxModel()
    release_text_backbone(model, ["liver"])
    assert model.encode_text(["liver"]).shape == (1, 4)
