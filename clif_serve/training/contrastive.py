"""Stage 1 (CLIF): contrastive tuning of the concept tokens against a frozen CLIP image tower.

Text side: the base text encoder's pooled output (end-of-text token) through a projection into the
image tower's space — the encoder's own `text_projection` where it has one (SDXL's second
encoder), else the CLIP folder's `text_projection` (as the reference does for SDXL's first
encoder, `clip_model.text_projection(pooled)`). Image features are computed once: the tower is
frozen and stage-1 images are not re-augmented per step (the reference preprocesses them once with
the CLIP processor too). Each step draws a batch of samples and applies the symmetric InfoNCE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clif_serve.concepts.prompt import EncodedPrompts
from clif_serve.errors import InputError
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel
from clif_serve.training.image_tower import ImageTower
from clif_serve.training.losses import symmetric_info_nce
from clif_serve.training.tables import TextSide


def match_towers(base: BaseModel, towers: Sequence[ImageTower]) -> list[ImageTower]:
    """The image tower of each text encoder (one tower serves all); mismatched widths are an error."""
    encoders = base.spec.text_encoders
    if len(towers) not in (1, len(encoders)):
        raise InputError("image_encoder", f"give one image encoder, or one per text encoder ({len(encoders)})")
    chosen = list(towers) * len(encoders) if len(towers) == 1 else list(towers)
    for module, encoder, tower in zip(base.text_encoders, encoders, chosen, strict=True):
        has_projection = getattr(module, "text_projection", None) is not None
        width = encoder.pooled_size if has_projection else encoder.hidden_size
        expected = tower.projection_dim if has_projection else tower.text_projection.in_features
        if width != expected:
            what = "projects its pooled output to" if has_projection else "pools to"
            raise InputError(
                "image_encoder",
                f"{encoder.name} {what} {width} features but the image encoder {tower.source} expects {expected}; "
                f"give an image encoder per text encoder whose widths match",
            )
    return chosen


def project_text(encoder: ConceptTextEncoder, tower: ImageTower, pooled: torch.Tensor) -> torch.Tensor:
    """Pooled text output in the tower's space (the encoder's own projection is already applied)."""
    if encoder.projection is not None:
        return pooled
    return tower.text_projection(pooled.to(tower.text_projection.weight.dtype))


@dataclass
class ContrastiveBatchData:
    """Pre-encoded stage-1 samples: caption ids, sample groups and image features per text encoder."""

    encoded: EncodedPrompts
    groups: list[str]
    image_features: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.groups)


def batch_text_features(
    text_side: TextSide, towers: Sequence[ImageTower], encoded: EncodedPrompts, index: torch.Tensor
) -> list[torch.Tensor]:
    """Projected pooled text features of the samples `index`, one tensor per text encoder."""
    outputs = text_side(encoded, index)
    return [
        project_text(encoder, tower, pooled)
        for encoder, tower, (_, pooled) in zip(text_side.encoders, towers, outputs, strict=True)
    ]


def clif_loss_fn(
    data: ContrastiveBatchData, text_side: TextSide, towers: Sequence[ImageTower], batch_size: int,
    logit_scale: float | None = None,
):
    """Stage-1 loss: symmetric InfoNCE per text encoder (mean over encoders) on a random batch."""

    def loss_fn(generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randperm(len(data), generator=generator)[:batch_size]
        groups = [data.groups[int(i)] for i in index]
        features = batch_text_features(text_side, towers, data.encoded, index)
        losses = [
            symmetric_info_nce(
                images[index.to(images.device)], text, logit_scale if logit_scale is not None else tower.logit_scale, groups
            )
            for images, text, tower in zip(data.image_features, features, towers, strict=True)
        ]
        loss = torch.stack(losses).mean()
        return {"loss": loss, "clif": loss.detach()}

    return loss_fn
