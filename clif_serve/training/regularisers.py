"""Terms added to the diffusion loss of the ti and lora stages, so they keep what stage 1 learnt.

Stage 1 separates look-alike concepts in the text encoder's space; the diffusion loss of the
later stages never looks at that separation and, at textual-inversion rates, moves the rows far
enough to undo it (docs/training.md, "The give-back"). Two remedies, both off by default:

* `contrastive_weight` w: `L = L_diffusion + w * L_stage1` — the stage-1 objective stays in the
  loss (its own batch, drawn from the same step generator);
* `anchor_weight` λ: `L = L_diffusion + λ * mean_rows ||e - e0||² / ||e0||²` — a trust region
  around `e0`, the rows when the first diffusion stage began (the stage-1 result), measured
  relative to the row's norm so that one λ fits encoders of any width.

Neither is in the CLIF reference code, which runs textual inversion on the diffusion loss alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from clif_serve.training.loop import LossFn
from clif_serve.training.tables import ConceptTables


def anchor_penalty(tables: ConceptTables, anchors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean relative squared distance of every concept row from its anchor, over all text encoders."""
    terms = []
    for table, anchor in zip(tables.tables, anchors, strict=True):
        anchor = anchor.to(table.device, table.dtype)
        terms.append(((table - anchor).pow(2).sum(dim=1) / anchor.pow(2).sum(dim=1).clamp(min=1e-12)).mean())
    return torch.stack(terms).mean()


def regularised(
    loss_fn: LossFn,
    contrastive: tuple[float, Callable[[torch.Generator], dict[str, torch.Tensor]]] | None = None,
    anchor: tuple[float, ConceptTables, Sequence[torch.Tensor]] | None = None,
) -> LossFn:
    """`loss_fn` plus the weighted stage-1 loss and/or the trust-region penalty (each optional)."""
    if contrastive is None and anchor is None:
        return loss_fn

    def combined(generator: torch.Generator) -> dict[str, torch.Tensor]:
        terms = loss_fn(generator)
        total = terms["loss"]
        if contrastive is not None:
            weight, stage_one = contrastive
            kept = stage_one(generator)["loss"]
            total = total + weight * kept
            terms["kept_contrastive"] = kept.detach()
        if anchor is not None:
            weight, tables, anchors = anchor
            penalty = anchor_penalty(tables, anchors)
            total = total + weight * penalty
            terms["anchor"] = penalty.detach()
        terms["loss"] = total
        return terms

    return combined
