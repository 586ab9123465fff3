"""Checkpoints are loaded from a memory map whose pages are handed back as the copy goes (no second copy)."""

import torch
from safetensors.torch import load_file, save_file

from segvol.model import build_model, model_config
from segvol.model.checkpoint import (
    _drop_resident_pages,
    _file_mappings,
    _mapped_safetensors,
    load,
    save,
)

torch.set_num_threads(1)


def test_mapped_safetensors_equal_the_library_reading_even_misaligned(tmp_path):
    path = tmp_path / "mixed.safetensors"
    tensors = {
        "a_flag": torch.tensor([True, False, True]),  # 3 bytes: what follows is misaligned
        "b_weight": torch.randn(5, 7),
        "c_half": torch.randn(3).half(),
        "d_count": torch.tensor(7),
        "e_bf16": torch.randn(4, 2).bfloat16(),
        "f_long": torch.arange(5),
    }
    save_file(tensors, str(path), metadata={"format": "test"})
    mapped = _mapped_safetensors(path)
    expected = load_file(str(path))
    assert sorted(mapped) == sorted(expected)
    for name, tensor in expected.items():
        assert mapped[name].dtype == tensor.dtype and mapped[name].shape == tensor.shape
        assert torch.equal(mapped[name], tensor), name
    assert _file_mappings(path)  # views of the file itself, not a copy
    _drop_resident_pages(_file_mappings(path))
    assert all(torch.equal(mapped[name], tensor) for name, tensor in expected.items())  # re-read from the file


def test_load_from_the_memory_map_gives_the_saved_weights(tmp_path):
    torch.manual_seed(1)
    model = build_model(model_config("tiny"))
    path = save(model, tmp_path / "tiny.safetensors")
    loaded = load(path)
    saved = model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in loaded.state_dict().items() if key in saved)
    assert not _file_mappings(path)  # nothing of the file is kept mapped after loading
