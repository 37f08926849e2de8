"""CLIP text encoder with concept-table injection.

Token ids below the base vocabulary size are looked up in the frozen token-embedding matrix as
usual; ids at or above it index a *per-sample* concept table `[B, K, H]` that comes with the
request. The embedding matrix is never resized, so new concepts need no re-export and samples with
different concepts can share one batch. The same module is what the PyTorch executor runs, what
the ONNX exporter traces and what training differentiates through (only the table gets gradients).

The pooled output is taken at the first end-of-text token of each sequence. That is what
transformers does for configs with a correct `eos_token_id`; for old configs with the legacy
`eos_token_id == 2` transformers takes the arg-max id instead, which would land on a concept
token here, so we deliberately always use the end-of-text position.
"""

from __future__ import annotations

import torch
from torch import nn

from clif_serve.models.spec import TextEncoderSpec


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive causal attention mask `[1, 1, L, L]` (0 on and below the diagonal)."""
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def inject_concepts(
    token_embedding: nn.Embedding, input_ids: torch.Tensor, concept_table: torch.Tensor
) -> torch.Tensor:
    """Token embeddings `[B, L, H]`: base rows for ids < vocab, concept-table rows for ids >= vocab."""
    vocab_size = token_embedding.num_embeddings
    is_concept = input_ids >= vocab_size
    base = token_embedding(torch.where(is_concept, torch.zeros_like(input_ids), input_ids))
    rows = torch.where(is_concept, input_ids - vocab_size, torch.zeros_like(input_ids))
    concept = torch.gather(concept_table, 1, rows.unsqueeze(-1).expand(-1, -1, concept_table.shape[-1]))
    return torch.where(is_concept.unsqueeze(-1), concept.to(base.dtype), base)


class ConceptTextEncoder(nn.Module):
    """`(input_ids [B, L], concept_table [B, K, H]) -> (hidden [B, L, H], pooled [B, P])`."""

    def __init__(self, text_encoder: nn.Module, spec: TextEncoderSpec):
        super().__init__()
        # transformers 5: CLIPTextModel holds the layers; CLIPTextModelWithProjection wraps one.
        self.clip = getattr(text_encoder, "text_model", text_encoder)
        self.projection = getattr(text_encoder, "text_projection", None)
        self.spec = spec

    def forward(self, input_ids: torch.Tensor, concept_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.clip.embeddings
        tokens = inject_concepts(embeddings.token_embedding, input_ids, concept_table)
        hidden = embeddings(inputs_embeds=tokens)
        mask = causal_mask(input_ids.shape[1], hidden.dtype, hidden.device)
        layers = self.clip.encoder.layers
        penultimate = hidden
        for index, layer in enumerate(layers):
            if index == len(layers) - 1:
                penultimate = hidden
            hidden = layer(hidden, mask)
        last = self.clip.final_layer_norm(hidden)
        eos_position = (input_ids == self.spec.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_position]
        if self.projection is not None:
            pooled = self.projection(pooled)
        return (penultimate if self.spec.hidden_layer == "penultimate" else last), pooled
