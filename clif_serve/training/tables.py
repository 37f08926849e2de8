"""The only trainable text-side state: one concept table per text encoder.

`ConceptTables` holds an `nn.Parameter` `[T_total, H]` per text encoder with the tokens of every
concept of the set. Captions are tokenised by the serving side's own `PromptEncoder` (so training
sees exactly the ids that generation will), and each sample's `[K, H]` table is rebuilt from the
parameters in the same row order (concepts in order of first appearance), so gradients reach the
concept rows only. Tokenizers, embedding matrices and encoder weights are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.prompt import EncodedPrompts, PromptEncoder
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel


class ConceptTables(nn.Module):
    """Concept-token embeddings of a concept set, one parameter per text encoder."""

    def __init__(self, packs: Sequence[ConceptPack], encoder_names: Sequence[str]):
        super().__init__()
        self.templates = {pack.name: pack for pack in packs}
        self.encoder_names = tuple(encoder_names)
        self.rows: dict[str, tuple[int, int]] = {}
        start = 0
        for pack in packs:
            self.rows[pack.name] = (start, pack.num_tokens)
            start += pack.num_tokens
        self.tables = nn.ParameterList(
            nn.Parameter(torch.cat([pack.embeddings[name].float() for pack in packs]).clone())
            for name in self.encoder_names
        )

    def of(self, encoder_index: int, name: str) -> torch.Tensor:
        """The rows `[T, H]` of one concept in one encoder's table."""
        start, count = self.rows[name]
        return self.tables[encoder_index][start : start + count]

    def batch_table(self, encoder_index: int, concepts: Sequence[Sequence[str]]) -> torch.Tensor:
        """Per-sample tables `[B, K, H]` (zero-padded, K >= 1) laid out as `PromptEncoder` lays them out."""
        hidden = self.tables[encoder_index].shape[1]
        per_sample = [
            torch.cat([self.of(encoder_index, name) for name in names])
            if names
            else self.tables[encoder_index].new_zeros(0, hidden)
            for names in concepts
        ]
        width = max(1, *(len(rows) for rows in per_sample))
        return torch.stack([F.pad(rows, (0, 0, 0, width - len(rows))) for rows in per_sample])

    def packs(self, lora: LoraWeights | None = None) -> list[ConceptPack]:
        """One pack per concept with the current embeddings (and the shared LoRA, if any)."""
        result = []
        for name, template in self.templates.items():
            embeddings = {
                encoder: self.of(index, name).detach().to("cpu", torch.float32).clone()
                for index, encoder in enumerate(self.encoder_names)
            }
            result.append(replace(template, embeddings=embeddings, lora=lora))
        return result


def encode_captions(base: BaseModel, captions: Sequence[str], packs: Sequence[ConceptPack]) -> EncodedPrompts:
    """Tokenise captions with triggers exactly as serving does (ids >= vocab index the sample table)."""
    return PromptEncoder(base.tokenizers, base.spec).encode(list(captions), {pack.trigger: pack for pack in packs})


class TextSide:
    """Runs the frozen text encoders on captions with the trainable concept tables."""

    def __init__(self, base: BaseModel, tables: ConceptTables, gradient_checkpointing: bool = False):
        self.encoders = [
            ConceptTextEncoder(module, spec) for module, spec in zip(base.text_encoders, base.spec.text_encoders, strict=True)
        ]
        self.tables = tables
        self.device = base.text_encoders[0].device
        self.gradient_checkpointing = gradient_checkpointing

    def __call__(self, encoded: EncodedPrompts, index: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`(hidden, pooled)` of every text encoder for the samples `index` of `encoded`."""
        concepts = [encoded.concepts[int(i)] for i in index]
        outputs = []
        for encoder_index, encoder in enumerate(self.encoders):
            ids = encoded.input_ids[encoder_index][index].to(self.device)
            table = self.tables.batch_table(encoder_index, concepts).to(self.device)
            if self.gradient_checkpointing:
                outputs.append(checkpoint(encoder, ids, table, use_reentrant=False))
            else:
                outputs.append(encoder(ids, table))
        return outputs
