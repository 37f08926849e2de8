"""Prompt expansion: triggers become concept-token ids that index a per-sample concept table.

`"a photo of <joe> with <rex>"` is split at its triggers; text pieces are tokenised by the base
tokenizer, and each trigger becomes its pack's tokens, numbered `vocab_size + row` where `row`
is the row of *this sample's* table `[K, H]` holding that token's embedding. Tables of a batch
are zero-padded to the same `K >= 1` (ONNX Runtime's Gather cannot take an empty table).
Prompts longer than the text encoder's window are refused, never silently truncated. A literal
`<word>` that is no trigger is written `\\<word>`: the backslash is dropped and `<word>` stays text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from clif_serve.concepts.pack import ConceptPack
from clif_serve.errors import InputError
from clif_serve.models.spec import ModelSpec, TextEncoderSpec

TRIGGER_IN_TEXT = re.compile(r"\\?<[A-Za-z0-9_-]+>")
ESCAPE = "\\"  # a backslash before a trigger makes it text: \<word> is the text <word>


@dataclass(frozen=True)
class EncodedPrompts:
    """Text-encoder inputs for a batch of prompts, one entry per text encoder."""

    input_ids: tuple[torch.Tensor, ...]  # [B, L] int64
    concept_tables: tuple[torch.Tensor, ...]  # [B, K, H] float32
    concepts: tuple[tuple[str, ...], ...]  # concept names used by each sample

    @property
    def batch_size(self) -> int:
        return int(self.input_ids[0].shape[0])


@dataclass(frozen=True)
class SplitPrompts:
    """Prompts split into text pieces and the packs of their triggers, with each prompt's request field."""

    pieces: tuple[list[str | ConceptPack], ...]
    fields: tuple[str, ...]

    def packs_per_prompt(self) -> list[list[ConceptPack]]:
        """The distinct packs each prompt uses, in order of first use."""
        return [
            list({p.name: p for p in pieces if isinstance(p, ConceptPack)}.values()) for pieces in self.pieces
        ]

    def packs(self) -> list[ConceptPack]:
        """The distinct packs all prompts use, in order of first use."""
        return list({pack.name: pack for packs in self.packs_per_prompt() for pack in packs}.values())


def split_prompt(prompt: str, concepts: Mapping[str, ConceptPack], field: str) -> list[str | ConceptPack]:
    """Split a prompt into text pieces and the packs of its triggers; unknown triggers are an error.

    Text and packs alternate, text first and last; an escaped trigger (`\\<word>`) stays text.
    """
    pieces: list[str | ConceptPack] = []
    text: list[str] = []
    position = 0
    for match in TRIGGER_IN_TEXT.finditer(prompt):
        found = match.group(0)
        text.append(prompt[position : match.start()])
        position = match.end()
        if found.startswith(ESCAPE):
            text.append(found[len(ESCAPE) :])
            continue
        if found not in concepts:
            known = ", ".join(sorted(concepts)) or "none loaded"
            raise InputError(
                field, f"unknown concept {found}; known concepts: {known} (write \\{found} for the text {found})"
            )
        pieces.append("".join(text))
        pieces.append(concepts[found])
        text = []
    text.append(prompt[position:])
    pieces.append("".join(text))
    return pieces


class PromptEncoder:
    """Turns prompts into `EncodedPrompts` for every text encoder of a base model."""

    def __init__(self, tokenizers: Sequence, spec: ModelSpec):
        if len(tokenizers) != len(spec.text_encoders):
            raise ValueError(f"{len(tokenizers)} tokenizers for {len(spec.text_encoders)} text encoders")
        self.tokenizers = tuple(tokenizers)
        self.spec = spec

    def _encode_one(
        self, pieces: list[str | ConceptPack], tokenizer, encoder: TextEncoderSpec, field: str
    ) -> tuple[list[int], list[torch.Tensor]]:
        ids: list[int] = []
        rows: list[torch.Tensor] = []
        first_row: dict[str, int] = {}
        for piece in pieces:
            if isinstance(piece, str):
                if piece.strip():
                    ids.extend(tokenizer(piece, add_special_tokens=False).input_ids)
                continue
            if piece.name not in first_row:
                first_row[piece.name] = len(rows)
                rows.extend(piece.embeddings[encoder.name].to(torch.float32))
            ids.extend(encoder.vocab_size + first_row[piece.name] + i for i in range(piece.num_tokens))
        limit = encoder.max_length - 2
        if len(ids) > limit:
            raise InputError(
                field,
                f"is {len(ids)} tokens long after expanding concept triggers; the limit is {limit} "
                f"({encoder.max_length} including start/end tokens)",
            )
        body = [encoder.bos_token_id, *ids, encoder.eos_token_id]
        return body + [encoder.pad_token_id] * (encoder.max_length - len(body)), rows

    def split(
        self, prompts: Sequence[str], concepts: Mapping[str, ConceptPack], fields: Sequence[str] | None = None
    ) -> SplitPrompts:
        """Split prompts at their triggers (unknown triggers raise InputError naming the prompt's field).

        `fields` names each prompt's request field for error messages (default: "prompt").
        """
        names = tuple(fields) if fields is not None else ("prompt",) * len(prompts)
        pieces = tuple(split_prompt(prompt, concepts, field) for prompt, field in zip(prompts, names, strict=True))
        return SplitPrompts(pieces, names)

    def encode(
        self,
        prompts: Sequence[str] | SplitPrompts,
        concepts: Mapping[str, ConceptPack] | None = None,
        fields: Sequence[str] | None = None,
    ) -> EncodedPrompts:
        """Encode a batch of prompts (or prompts already split) with the concepts (by trigger) they may use."""
        split = prompts if isinstance(prompts, SplitPrompts) else self.split(prompts, concepts or {}, fields)
        all_ids, all_tables = [], []
        for tokenizer, encoder in zip(self.tokenizers, self.spec.text_encoders, strict=True):
            encoded = [
                self._encode_one(pieces, tokenizer, encoder, field)
                for pieces, field in zip(split.pieces, split.fields, strict=True)
            ]
            width = max(1, *(len(rows) for _, rows in encoded))
            table = torch.zeros(len(split.pieces), width, encoder.hidden_size)
            for sample, (_, rows) in enumerate(encoded):
                if rows:
                    table[sample, : len(rows)] = torch.stack(rows)
            all_ids.append(torch.tensor([ids for ids, _ in encoded], dtype=torch.int64))
            all_tables.append(table)
        used = tuple(tuple(pack.name for pack in packs) for packs in split.packs_per_prompt())
        return EncodedPrompts(tuple(all_ids), tuple(all_tables), used)
