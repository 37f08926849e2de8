"""CustomContrast objective — a documented RECONSTRUCTION (no public code exists).

CustomContrast (Chen et al., "A Multilevel Contrastive Perspective for Subject-Driven
Text-to-Image Customization") trains a multimodal feature-injection (MFI) encoder with a
multilevel contrastive loss: a cross-sample CLS-level loss (CSCL) and a multi-scale appearance
loss over views and per-layer features with similarity-weighted negatives. This project tunes
concept tokens only (no encoder, no large-scale pretraining), so both terms are rebuilt on the
concept rows, with the frozen CLIP image tower as the image side (docs/objectives.md):

* cross-sample term: augmented views of every concept image (crop, flip, background swap via the
  over-segmentation, mild colour jitter) and of the common-concept images are contrasted with the
  captions "a photo of <c>" / "a photo of a <word>":
  `L_cs = 1/2 [ mean_i CE(v_i . T / tau, y_i) + mean_c CE(t_c . P / tau, c) ]`, where `P` holds
  the class prototypes (normalised mean of the views of each class in the batch). With identical
  views and equal counts this is exactly the symmetric InfoNCE of stage 1 with scale `1/tau`.
* multi-view per-layer term: every text-encoder layer's end-of-text state, read out through the
  encoder's final layer norm and the projection the pooled output uses (parameter-free per-layer
  projections), against
  the views, with negatives weighted by their similarity:
  `L_l = mean_i -log( e^{s_ip/tau_l} / (e^{s_ip/tau_l} + sum_n w_in e^{s_in/tau_l}) )`,
  `w_in = (N-1) softmax_n(beta * s_in)` (detached), averaged over layers.
Left out: the MFI encoder and its pretraining, the paper's patch-level appearance features, its
exact weights and temperatures (not all are given), and any image-side learning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clif_serve.concepts.prompt import EncodedPrompts
from clif_serve.training.config import CustomContrastConfig
from clif_serve.training.image_tower import ImageTower
from clif_serve.training.tables import TextSide


def cross_sample_loss(views: torch.Tensor, labels: torch.Tensor, texts: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLS-level cross-sample InfoNCE: views `[B, D]` of classes `labels` against class texts `[C, D]`.

    Views -> texts per view; texts -> class prototypes (normalised mean view) for the classes present.
    """
    normalised_views = F.normalize(views.float(), dim=-1)
    normalised_texts = F.normalize(texts.float(), dim=-1)
    present = torch.unique(labels)
    prototypes = F.normalize(torch.stack([normalised_views[labels == c].mean(0) for c in present]), dim=-1)
    view_to_text = F.cross_entropy(normalised_views @ normalised_texts.T / temperature, labels)
    text_to_view = F.cross_entropy(
        normalised_texts[present] @ prototypes.T / temperature, torch.arange(len(present), device=views.device)
    )
    return (view_to_text + text_to_view) / 2


def weighted_negative_nce(
    views: torch.Tensor, labels: torch.Tensor, texts: torch.Tensor, temperature: float, beta: float
) -> torch.Tensor:
    """InfoNCE of views against class texts where each negative is weighted by `(N-1) softmax(beta * s)`."""
    scores = F.normalize(views.float(), dim=-1) @ F.normalize(texts.float(), dim=-1).T
    positive = scores.gather(1, labels[:, None]).squeeze(1)
    negative_mask = torch.ones_like(scores, dtype=torch.bool).scatter_(1, labels[:, None], False)
    negatives = scores[negative_mask].view(len(scores), -1)
    weights = (negatives.shape[1] * torch.softmax(beta * negatives, dim=1)).detach()
    denominator = torch.exp(positive / temperature) + (weights * torch.exp(negatives / temperature)).sum(1)
    return (-(positive / temperature) + torch.log(denominator)).mean()


@dataclass
class ViewData:
    """Pre-encoded customcontrast data: view features and labels, the class captions."""

    view_features: list[torch.Tensor]  # per text encoder `[V, D]`
    labels: torch.Tensor  # `[V]` class index (concepts first, then common concepts)
    captions: EncodedPrompts  # one caption per class


def layer_readouts(text_side: TextSide, encoded: EncodedPrompts, towers: Sequence[ImageTower]) -> list[list[torch.Tensor]]:
    """Per text encoder, per layer: the end-of-text state through final layer norm + projection `[C, D]`."""
    index = torch.arange(encoded.batch_size)
    readouts = []
    for encoder_index, (encoder, tower) in enumerate(zip(text_side.encoders, towers, strict=True)):
        captured: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda _m, _i, out, into=captured: into.append(out))
            for layer in encoder.clip.encoder.layers
        ]
        try:
            ids = encoded.input_ids[encoder_index]
            concepts = [encoded.concepts[int(i)] for i in index]
            encoder(ids.to(text_side.device), text_side.tables.batch_table(encoder_index, concepts).to(text_side.device))
        finally:
            for hook in hooks:
                hook.remove()
        eos = (ids == encoder.spec.eos_token_id).int().argmax(dim=-1).to(text_side.device)
        rows = torch.arange(len(ids), device=text_side.device)
        projection = encoder.projection if encoder.projection is not None else tower.text_projection
        readouts.append([projection(encoder.clip.final_layer_norm(h)[rows, eos]) for h in captured])
    return readouts


def customcontrast_loss_fn(
    data: ViewData, text_side: TextSide, towers: Sequence[ImageTower], batch_size: int, config: CustomContrastConfig
):
    """The customcontrast stage-1 loss on a random batch of views (mean over text encoders)."""

    def loss_fn(generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randperm(len(data.labels), generator=generator)[:batch_size]
        labels = data.labels[index]
        cross, multi = [], []
        for features, layers in zip(data.view_features, layer_readouts(text_side, data.captions, towers), strict=True):
            views = features[index.to(features.device)]
            target = labels.to(features.device)
            cross.append(cross_sample_loss(views, target, layers[-1], config.temperature))
            multi.append(
                torch.stack(
                    [weighted_negative_nce(views, target, layer, config.layer_temperature, config.negative_beta) for layer in layers]
                ).mean()
            )
        cross_term, multi_term = torch.stack(cross).mean(), torch.stack(multi).mean()
        loss = config.cross_sample_weight * cross_term + config.multiview_weight * multi_term
        return {"loss": loss, "cross_sample": cross_term.detach(), "multiview": multi_term.detach()}

    return loss_fn
