"""Our CLIP BPE tokenizer against known CLIP token ids and the merges file's own structure."""

from __future__ import annotations

import gzip

import pytest
import torch

from segvol.model.tokenizer import ClipTokenizer, find_bpe_file


@pytest.fixture(scope="module")
def tokenizer():
    try:
        return ClipTokenizer()
    except FileNotFoundError as error:
        pytest.skip(str(error))


def test_known_ids(tokenizer):
    assert tokenizer("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Case and whitespace are normalized away.
    assert tokenizer("  A   PHOTO of a\tcat ") == tokenizer("a photo of a cat")


def test_vocabulary_layout_follows_the_merges_file(tokenizer):
    assert tokenizer.vocab_size == 49408
    assert (tokenizer.sot_id, tokenizer.eot_id) == (49406, 49407)
    with gzip.open(tokenizer.bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    first_merge, last_merge = lines[1].split(), lines[48894].split()
    assert tokenizer.encoder["".join(first_merge)] == 512  # after 256 bytes and 256 bytes+</w>
    assert tokenizer.encoder["".join(last_merge)] == 49405
    assert tokenizer.encoder["a"] == 64 and tokenizer.encoder["a</w>"] == 64 + 256


def test_round_trip_and_rare_words_fall_back_to_byte_pieces(tokenizer):
    text = "a computerized tomography of a inferior vena cava."
    assert tokenizer.decode(tokenizer.encode(text)) == "a computerized tomography of a inferior vena cava ."
    ids = tokenizer.encode("zqxj")  # not a word: several sub-word pieces, all in the vocabulary
    assert len(ids) > 1 and all(0 <= i < 49406 for i in ids)
    assert tokenizer.decode(ids) == "zqxj"
    assert tokenizer.decode(tokenizer.encode("é")) == "é"  # multi-byte characters survive


def test_batch_pads_with_end_of_text_and_points_at_it(tokenizer):
    ids, mask, eot = tokenizer.batch(["liver", "inferior vena cava"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    short = tokenizer("liver")
    assert ids[0, : len(short)].tolist() == short
    assert (ids[0, len(short) :] == tokenizer.eot_id).all()
    assert mask[0].sum() == len(short) and mask[1].sum() == ids.shape[1]
    assert ids[torch.arange(2), eot].tolist() == [tokenizer.eot_id] * 2
    with pytest.raises(ValueError, match="more than the 5 allowed"):
        tokenizer.batch(["a very long category name indeed"], max_length=5)


def test_missing_or_broken_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt.gz"):
        find_bpe_file(tmp_path / "nowhere.txt.gz")
    broken = tmp_path / "bpe.txt.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bpe.txt.gz"):
        ClipTokenizer(broken)
