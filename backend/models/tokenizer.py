"""The CLIP BPE tokenizer built offline from the vocabulary that open_clip's wheel ships.

CLIP's vocabulary is: the 256 byte tokens, the same with "</w>", the first 48,894 merges joined,
then "<|startoftext|>" and "<|endoftext|>" (49,408 ids). Ids match the hub tokenizer's.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

CLIP_MERGE_COUNT = 49152 - 256 - 2
CLIP_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def bpe_vocabulary_file() -> Path:
    """The vocabulary file inside open_clip's package folder, found without importing open_clip (its import
    pulls in torchvision, seconds of work a tokenizer does not need)."""
    package = importlib.util.find_spec("open_clip")
    if package is None or not package.submodule_search_locations:
        raise RuntimeError("open-clip-torch is not installed; it ships the CLIP vocabulary")
    return Path(package.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(bpe_vocabulary_file(), "rt", encoding="utf-8") as text:
        lines = text.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGE_COUNT + 1]]
    tokens = list(_bytes_to_unicode().values())
    tokens = tokens + [token + "</w>" for token in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """SD1.x/SD2.x/SDXL text encoder 1 pad with <|endoftext|>; SDXL's OpenCLIP encoder pads with "!"."""
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=CLIP_MAX_LENGTH,
        pad_token=pad_token,
    )
