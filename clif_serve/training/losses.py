"""Stage-1 contrastive loss: symmetric InfoNCE with a fixed logit scale (reference: train/loss.py).

The reference `ClipLoss` is `(CE(s * I @ T^T, arange) + CE(s * T @ I^T, arange)) / 2` with `s`
the CLIP model's `logit_scale.exp()`, fixed. Two deliberate differences, both documented in
docs/training.md:

* features are L2-normalised first (CLIP's own training does; the reference passes
  `get_image_features` / `text_projection` outputs unnormalised, which with `s = 100` makes the
  logits depend on feature norms);
* `groups` may mark samples that say the same thing (two images of `<joe>` captioned "a photo of
  <joe>"): their pairs are all positives, the target spread evenly over them. With distinct
  groups (or `groups=None`) the targets are the reference's `arange` labels exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def group_targets(groups: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
    """Row-normalised positive mask `[N, N]`: 1/|group| where groups match (identity if all differ)."""
    index = {group: i for i, group in enumerate(dict.fromkeys(groups))}
    ids = torch.tensor([index[group] for group in groups], device=device)
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def symmetric_info_nce(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float,
    groups: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over a batch of (image, caption) pairs."""
    image = F.normalize(image_features.float(), dim=-1)
    text = F.normalize(text_features.float(), dim=-1)
    logits = logit_scale * image @ text.T
    if groups is None:
        targets = torch.arange(len(logits), device=logits.device)
    else:
        targets = group_targets(groups, logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
