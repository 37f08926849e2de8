"""Region-aware cross-attention in the UNet: each region's prompt is attended to inside its mask.

The method of Mix-of-Show's regionally controllable sampling, as clif-serve implements it (see
docs/regions.md). At every cross-attention layer, for a query at position p of that layer's
feature map (level k, i.e. the latent map downsampled k times by 2):

    w_r(p) = mean of region r's latent mask over the 2^k x 2^k latent cells under p   (r = 1..R)
    out(p) = (1 - sum_r w_r(p)) * Attn(q_p, K_0, V_0) + sum_r w_r(p) * Attn(q_p, K_r, V_r)

with `K_0, V_0` the global prompt's keys/values and `K_r, V_r = to_k/to_v(region r's token
states)`: one softmax per prompt, blended by the masks, before `to_out`. Self-attention,
convolutions, the feed-forward layers and `to_q`/`to_out` run once, whatever the number of
regions. Masks are disjoint (`sum_r w_r <= 1`), so with all masks zero `out = Attn_0` exactly,
and a mask of ones whose prompt is the global prompt gives `Attn_0` again.

`install(unet)` gives every attention module of a diffusers UNet a `RegionalAttnProcessor` that
knows its level; a UNet call with `cross_attention_kwargs=region_kwargs(hidden, masks, levels)`
takes the regional path, one without runs diffusers' own `AttnProcessor2_0`, untouched. The
PyTorch executor calls the UNet this way, and the exporter traces the same code into the ONNX
UNet that the ONNX Runtime, Triton and TensorRT paths run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

REGIONS_KWARG = "regions"


@dataclass(frozen=True)
class RegionAttention:
    """One UNet call's regions: token states `[B, R, L, D]` and mask weights per level `[B, R, N_k]`."""

    hidden: torch.Tensor
    weights: tuple[torch.Tensor, ...]


def unet_levels(unet: nn.Module) -> int:
    """Resolution levels of a diffusers UNet (its number of down blocks)."""
    return len(unet.down_blocks)


def _level_of(name: str, levels: int) -> int:
    """The resolution level an attention module runs at, from its module path."""
    block, index = name.split(".")[:2]
    if block == "down_blocks":
        return int(index)
    if block == "up_blocks":
        return levels - 1 - int(index)
    if block == "mid_block":
        return levels - 1
    raise ValueError(f"{name}: not an attention module of a down, mid or up block")


def region_weights(masks: torch.Tensor, levels: int) -> tuple[torch.Tensor, ...]:
    """Latent masks `[B, R, h, w]` -> mask weights `[B, R, (h / 2^k) (w / 2^k)]` for k = 0..levels-1."""
    weights = []
    for level in range(levels):
        pooled = masks if level == 0 else F.avg_pool2d(masks, kernel_size=2**level, stride=2**level)
        weights.append(pooled.flatten(2))
    return tuple(weights)


def region_kwargs(hidden: torch.Tensor, masks: torch.Tensor, levels: int) -> dict[str, RegionAttention]:
    """The `cross_attention_kwargs` of a regional UNet call."""
    return {REGIONS_KWARG: RegionAttention(hidden, region_weights(masks, levels))}


class RegionalAttnProcessor:
    """diffusers' `AttnProcessor2_0`, plus the regional blend of cross-attention when regions are given."""

    def __init__(self, level: int):
        self.level = level
        self.plain = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regions: RegionAttention | None = None,
    ) -> torch.Tensor:
        if regions is None or encoder_hidden_states is None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("regional cross-attention takes no attention mask, spatial or group norm")
        if hidden_states.ndim != 3:
            raise NotImplementedError("regional cross-attention expects [B, N, C] hidden states")
        batch, queries, _ = hidden_states.shape
        residual = hidden_states
        prompts = 1 + regions.hidden.shape[1]
        # The global prompt first, then the regions': one key/value projection, one attention call.
        context = torch.cat([encoder_hidden_states[:, None], regions.hidden], dim=1)
        tokens = context.shape[2]
        context = context.flatten(1, 2)
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(context), attn.to_v(context)
        heads, head_dim = attn.heads, key.shape[-1] // attn.heads
        query = query.view(batch, 1, queries, heads, head_dim).transpose(2, 3)
        query = query.expand(batch, prompts, heads, queries, head_dim).reshape(batch * prompts, heads, queries, head_dim)
        key = key.view(batch * prompts, tokens, heads, head_dim).transpose(1, 2)
        value = value.view(batch * prompts, tokens, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.view(batch, prompts, heads, queries, head_dim)
        masks = regions.weights[self.level]  # [B, R, N]
        weights = torch.cat([1 - masks.sum(dim=1, keepdim=True), masks], dim=1)  # [B, 1 + R, N]
        blended = (out * weights[:, :, None, :, None]).sum(dim=1)  # [B, heads, N, head_dim]
        hidden_states = blended.transpose(1, 2).reshape(batch, queries, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install(unet: nn.Module) -> None:
    """Give every attention module of a diffusers UNet a `RegionalAttnProcessor` (idempotent).

    Without region kwargs the processors run `AttnProcessor2_0`, diffusers' default, unchanged.
    """
    levels = unet_levels(unet)
    processors = unet.attn_processors
    if all(isinstance(p, RegionalAttnProcessor) for p in processors.values()):
        return
    unet.set_attn_processor({name: RegionalAttnProcessor(_level_of(name, levels)) for name in processors})
