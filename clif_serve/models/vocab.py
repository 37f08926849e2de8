"""A small CLIP-style byte-level BPE vocabulary, generated offline for the embedded tiny models.

Merges are learned on a built-in caption corpus after the same normalisation and pre-tokenisation
as transformers' `CLIPTokenizer` (lower-casing, CLIP's split pattern, byte-level symbols, `</w>`
word ends), and the result is loaded as a real `CLIPTokenizer`, so it behaves like CLIP's with about
650 entries instead of 49 408.

The merge learner is written here instead of using `tokenizers.trainers.BpeTrainer` because that
trainer breaks frequency ties in hash-map order, which differs between processes: the vocabulary,
and with it the base-model fingerprint, must be the same on every machine.
"""

from __future__ import annotations

from collections import Counter
from importlib import resources

from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"


def _corpus_words() -> Counter[tuple[str, ...]]:
    """Word counts of the built-in corpus, each word as byte-level symbols ending in `</w>`."""
    text = resources.files("clif_serve.models").joinpath("data/corpus.txt").read_text("utf-8")
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    splitter = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    words: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line)):
            words[(*word[:-1], word[-1] + END_OF_WORD)] += 1
    return words


def learn_merges(words: Counter[tuple[str, ...]], max_merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """Greedy BPE: merge the most frequent adjacent pair (ties: smallest pair) until none reaches min_count."""
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        if count < min_count:
            break
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, word_count in words.items():
            symbols, index = [], 0
            while index < len(word):
                if word[index : index + 2] == best:
                    symbols.append(best[0] + best[1])
                    index += 2
                else:
                    symbols.append(word[index])
                    index += 1
            merged[tuple(symbols)] += word_count
        words = merged
    return merges


def build_clip_tokenizer(vocab_size: int = 1000, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """A deterministic CLIPTokenizer: 256 byte symbols, their `</w>` forms, learned merges, start/end tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = alphabet + [symbol + END_OF_WORD for symbol in alphabet]
    merges = learn_merges(_corpus_words(), max_merges=vocab_size - len(base) - 2)
    vocab: dict[str, int] = {}
    for symbol in base + [left + right for left, right in merges] + [BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(symbol, len(vocab))
    if pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not in the generated vocabulary")
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)
