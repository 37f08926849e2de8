"""A small CLIP-style byte-level BPE vocabulary, generated offline for the embedded tiny models.

The vocabulary is trained with the `tokenizers` library on a built-in caption corpus, using the
same normaliser and pre-tokeniser as transformers' `CLIPTokenizer`, so the resulting
`CLIPTokenizer` behaves like the real one (lower-casing, `</w>` word ends, byte fallback) with a
vocabulary of about a thousand entries instead of 49 408.
"""

from __future__ import annotations

import json
from importlib import resources

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def _corpus_lines() -> list[str]:
    text = resources.files("clif_serve.models").joinpath("data/corpus.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _clip_like_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tokenizer


def build_clip_tokenizer(vocab_size: int = 1000, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """Train a deterministic byte-level BPE on the built-in corpus and wrap it as a CLIPTokenizer.

    The vocabulary starts with the 256 byte symbols and their `</w>` forms (as CLIP's does), then
    the learned merges, then the start/end tokens, so every text can be tokenised.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = _clip_like_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]

    vocab: dict[str, int] = {}
    for symbol in alphabet + [s + "</w>" for s in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in (BOS_TOKEN, EOS_TOKEN):
        vocab.setdefault(special, len(vocab))
    if pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not in the generated vocabulary")
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        pad_token=pad_token,
        model_max_length=77,
    )
