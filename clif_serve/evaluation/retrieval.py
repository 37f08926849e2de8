"""Region->concept retrieval confusion: how well the concept tokens separate the concepts' parts.

Regions of each concept's images (ground-truth part masks in the synthetic world, the
over-segmentation of reference photos for real checkpoints) are embedded by a CLIP image tower;
each region goes to the concept whose caption "a photo of <c>" — encoded by the *base model's*
text encoder with the concept packs and projected by the CLIP folder's text projection, as stage 1
sees it — is closest (cosine). Confusion = share of regions assigned to a wrong concept (exact
ties count as a fair share). `raw` uses the cosines as they are; `calibrated` first subtracts each
caption's mean cosine over all regions (look-alike captions often differ by a near-constant offset
that sends every region to one concept). With two concepts 0.5 is chance.

This measures the text embeddings in the space stage 1 optimises, not generated images; it is
the secondary metric of the confusion benchmark and the region-level score of `clif-serve eval`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clif_serve.concepts.pack import ConceptPack
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel
from clif_serve.training.contrastive import match_towers, project_text
from clif_serve.training.image_tower import ImageTower
from clif_serve.training.tables import encode_captions

CAPTION = "a photo of {}"
TIE = 1e-6


@torch.no_grad()
def concept_text_features(base: BaseModel, tower: ImageTower, packs: Sequence[ConceptPack]) -> torch.Tensor:
    """Normalised `[K, D]` features of "a photo of <c>" for each pack (first text encoder)."""
    match_towers(base, [tower])  # the tower's text projection must fit the encoder's pooled width
    encoder = ConceptTextEncoder(base.text_encoders[0], base.spec.text_encoders[0])
    encoded = encode_captions(base, [CAPTION.format(pack.trigger) for pack in packs], packs)
    pooled = encoder(encoded.input_ids[0], encoded.concept_tables[0])[1]
    return F.normalize(project_text(encoder, tower, pooled).float(), dim=-1)


def wrong_share(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose own column is not the highest (ties share the credit evenly)."""
    own = scores.gather(1, labels[:, None])
    better = (scores > own + TIE).any(dim=1)
    tied = ((scores - own).abs() <= TIE).sum(dim=1).float()  # includes the own column
    return float(torch.where(better, torch.ones_like(tied), 1 - 1 / tied).mean())


def retrieval_confusion(
    region_features: torch.Tensor, labels: Sequence[int], text_features: torch.Tensor
) -> dict[str, float]:
    """`raw` and `calibrated` confusion of regions `[N, D]` labelled with concept indices."""
    scores = F.normalize(region_features.float(), dim=-1) @ text_features.T
    truth = torch.as_tensor(list(labels), dtype=torch.long)
    return {
        "raw": wrong_share(scores, truth),
        "calibrated": wrong_share(scores - scores.mean(dim=0, keepdim=True), truth),
        "regions": len(truth),
    }
