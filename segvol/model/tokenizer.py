"""CLIP byte-pair-encoding tokenizer, built from the `bpe_simple_vocab_16e6.txt.gz` merges file.

Vocabulary (49,408 ids): the 256 byte characters, the same with `</w>` (end of word), one
token per merge rule (lines 1..48894 of the file), then `<|startoftext|>` = 49406 and
`<|endoftext|>` = 49407. Text is HTML-unescaped, whitespace-collapsed and lower-cased (the
`ftfy` repair step of the original is not applied; category names are plain ASCII).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import regex

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def find_bpe_file(path: str | os.PathLike | None = None) -> Path:
    """The merges file: `path`, else $SEGVOL_CLIP_BPE, else the copy shipped in segvol/model/data/ (MIT,
    from open_clip: installing open_clip only for this file left its dependencies, torchvision among
    them, unmet), else inside an installed open_clip/clip package.

    Packages are located with importlib without being imported (importing open_clip would pull
    in torchvision).
    """
    if path is None:
        path = os.environ.get("SEGVOL_CLIP_BPE") or None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE merges file not found: {path}")
        return path
    shipped = Path(__file__).with_name("data") / BPE_FILE_NAME
    if shipped.is_file():
        return shipped
    searched = [str(shipped)]
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / BPE_FILE_NAME
            searched.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"CLIP BPE merges file {BPE_FILE_NAME} not found "
        f"(looked in: {', '.join(searched) or 'no open_clip/clip package'}); "
        "reinstall segvol or set SEGVOL_CLIP_BPE to the file"
    )


def _printable_bytes() -> list[int]:
    return [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]


@lru_cache(maxsize=1)
def byte_characters() -> tuple[str, ...]:
    """One printable character per byte value 0..255: printable Latin-1 bytes stand for
    themselves, the other bytes get chr(256), chr(257), ... in byte order."""
    printable = set(_printable_bytes())
    table = []
    extra = 0
    for byte in range(256):
        if byte in printable:
            table.append(chr(byte))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return tuple(table)


def byte_vocabulary_order() -> list[str]:
    """The byte characters in vocabulary order: printable bytes first, then the remapped ones."""
    chars = byte_characters()
    printable = _printable_bytes()
    rest = [b for b in range(256) if b not in set(printable)]
    return [chars[b] for b in printable + rest]


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(word[:-1], word[1:])}


class ClipTokenizer:
    """Text -> CLIP token ids. `tokenizer("a photo of a cat")` -> [49406, 320, 1125, 539, 320, 2368, 49407]."""

    def __init__(self, bpe_path: str | os.PathLike | None = None) -> None:
        self.bpe_path = find_bpe_file(bpe_path)
        try:
            with gzip.open(self.bpe_path, "rt", encoding="utf-8") as handle:
                lines = handle.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.bpe_path}: not a readable gzip'ed CLIP merges file ({error})") from error
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{self.bpe_path}: expected {N_MERGES} merge rules of two symbols each")
        self._byte_chars = byte_characters()
        byte_vocab = byte_vocabulary_order()
        vocab = byte_vocab + [c + "</w>" for c in byte_vocab]
        vocab += ["".join(m) for m in merges] + [START_OF_TEXT, END_OF_TEXT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.merge_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id = self.encoder[START_OF_TEXT]
        self.eot_id = self.encoder[END_OF_TEXT]
        self._cache = {START_OF_TEXT: START_OF_TEXT, END_OF_TEXT: END_OF_TEXT}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, token: str) -> str:
        """One pre-tokenized word (byte characters) -> space-separated BPE symbols."""
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        while pairs:
            best = min(pairs, key=lambda pair: self.merge_ranks.get(pair, float("inf")))
            if best not in self.merge_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        result = " ".join(word)
        self._cache[token] = result
        return result

    @staticmethod
    def clean(text: str) -> str:
        text = html.unescape(html.unescape(text))
        return " ".join(text.split()).lower()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without start/end tokens."""
        ids: list[int] = []
        for word in _WORD_PATTERN.findall(self.clean(text)):
            word = "".join(self._byte_chars[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self._bpe(word).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text (words separated by single spaces; special tokens kept)."""
        byte_values = {c: b for b, c in enumerate(self._byte_chars)}
        words = "".join(self.decoder[i] for i in ids).split("</w>")
        decoded = [bytearray(byte_values[c] for c in word).decode("utf-8", errors="replace") for word in words]
        return " ".join(w for w in decoded if w)

    def __call__(self, text: str) -> list[int]:
        """[<|startoftext|>] + encode(text) + [<|endoftext|>]."""
        return [self.sot_id, *self.encode(text), self.eot_id]

    def batch(self, texts: list[str], max_length: int | None = None):
        """Pad to the longest text with <|endoftext|> -> (ids (K, L) long, attention_mask (K, L), eot_index (K,))."""
        import torch

        rows = [self(t) for t in texts]
        if max_length is not None:
            for text, row in zip(texts, rows):
                if len(row) > max_length:
                    raise ValueError(f"text {text!r} has {len(row)} CLIP tokens, more than the {max_length} allowed")
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.eot_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        eot_index = torch.tensor([len(r) - 1 for r in rows])
        return ids, mask, eot_index
