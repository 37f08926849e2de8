"""The one sampling loop: diffusers scheduler + classifier-free guidance over any `Executor`.

It follows diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline step for step (same
latent noise from the seed, same scheduler calls, same guidance formula, SDXL's pooled embeddings
and time ids, SDXL's zeroed negative for an absent negative prompt), so for the same inputs it
gives the same image as diffusers; `tests/test_parity_diffusers.py` checks that.

A request's regions reach the UNet of every executor as `RegionInputs` (region-aware
cross-attention, docs/regions.md): the conditional samples carry the regions' token states and
latent masks, the unconditional ones none, so the negative prompt applies to the whole image.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from clif_serve.concepts.prompt import EncodedPrompts
from clif_serve.models.spec import ModelSpec
from clif_serve.runtime.executor import Executor, RegionInputs
from clif_serve.runtime.request import GenerationRequest

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on: token states `[B, L, D]` and, for SDXL, pooled `[B, P]`."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None

    def take(self, index: int) -> Conditioning:
        """The conditioning of one sample, keeping the batch dimension."""
        pooled = None if self.pooled is None else self.pooled[index : index + 1]
        return Conditioning(self.hidden[index : index + 1], pooled)

    def zeros_like(self) -> Conditioning:
        return Conditioning(torch.zeros_like(self.hidden), None if self.pooled is None else torch.zeros_like(self.pooled))

    def repeat(self, times: int) -> Conditioning:
        return Conditioning(
            self.hidden.repeat_interleave(times, dim=0),
            None if self.pooled is None else self.pooled.repeat_interleave(times, dim=0),
        )

    @staticmethod
    def cat(first: Conditioning, second: Conditioning) -> Conditioning:
        pooled = None if first.pooled is None else torch.cat([first.pooled, second.pooled])
        return Conditioning(torch.cat([first.hidden, second.hidden]), pooled)


@dataclass(frozen=True)
class RegionConditioning:
    """A request's regions: their prompts' token states `[R, L, D]` and latent masks `[R, h, w]`."""

    hidden: torch.Tensor
    masks: torch.Tensor

    @classmethod
    def of(cls, hidden: torch.Tensor, pixel_masks: np.ndarray, vae_scale_factor: int) -> RegionConditioning:
        """From the region prompts' token states and their pixel masks `[R, H, W]`, averaged over each
        latent cell."""
        masks = torch.from_numpy(np.ascontiguousarray(pixel_masks, dtype=np.float32))
        masks = F.avg_pool2d(masks[None], kernel_size=vae_scale_factor, stride=vae_scale_factor)[0]
        return cls(hidden, masks)

    def inputs(self, count: int, guidance: bool, device: torch.device) -> RegionInputs:
        """The region inputs of a UNet batch of `count` images (unconditional samples first under guidance)."""
        hidden = self.hidden[None].repeat(count, 1, 1, 1)
        masks = self.masks[None].repeat(count, 1, 1, 1)
        if guidance:
            hidden, masks = torch.cat([torch.zeros_like(hidden), hidden]), torch.cat([torch.zeros_like(masks), masks])
        return RegionInputs(hidden.to(device), masks.to(device))


def make_scheduler(spec: ModelSpec):
    """A fresh scheduler of the model's class and config (schedulers are stateful: one per request)."""
    return getattr(diffusers, spec.scheduler_class).from_config(spec.scheduler_config)


def encode_conditioning(executor: Executor, prompts: EncodedPrompts) -> Conditioning:
    """Run every text encoder; SDXL concatenates the encoders' states and pools from the last one."""
    outputs = [
        executor.encode_text(index, ids, table)
        for index, (ids, table) in enumerate(zip(prompts.input_ids, prompts.concept_tables, strict=True))
    ]
    if executor.spec.kind == "sd15":
        return Conditioning(outputs[0][0], None)
    return Conditioning(torch.cat([hidden for hidden, _ in outputs], dim=-1), outputs[-1][1])


def sdxl_time_ids(height: int, width: int, batch: int) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop top-left (0, 0), target size."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)


def _step_kwargs(scheduler, generator: torch.Generator) -> dict:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def sample(
    executor: Executor,
    request: GenerationRequest,
    positive: Conditioning,
    negative: Conditioning | None,
    lora_id: str | None = None,
    on_step: StepCallback | None = None,
    regions: RegionConditioning | None = None,
) -> torch.Tensor:
    """Denoise from the request's seed and decode: images `[N, 3, H, W]` in [0, 1] (float32).

    `positive`/`negative` hold one prompt each (batch 1); `request` must be validated; `regions`
    are its regions (None: none).
    """
    spec = executor.spec
    scheduler = make_scheduler(spec)
    # Timesteps first: some schedulers (Euler) derive init_noise_sigma from them.
    scheduler.set_timesteps(request.steps, device=executor.device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    count = request.num_images
    shape = (count, spec.latent_channels, request.height // spec.vae_scale_factor, request.width // spec.vae_scale_factor)
    latents = randn_tensor(shape, generator=generator, dtype=torch.float32).to(executor.device)
    latents = latents * scheduler.init_noise_sigma

    condition = positive.repeat(count)
    if request.uses_guidance:
        condition = Conditioning.cat(negative.repeat(count), condition)
    batch = condition.hidden.shape[0]
    time_ids = None
    if spec.kind == "sdxl":
        time_ids = sdxl_time_ids(request.height, request.width, batch).to(executor.device)
    region_inputs = None if regions is None else regions.inputs(count, request.uses_guidance, executor.device)

    step_kwargs = _step_kwargs(scheduler, generator)
    timesteps = scheduler.timesteps
    for index, timestep in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if request.uses_guidance else latents
        model_input = scheduler.scale_model_input(model_input, timestep)
        noise = executor.predict_noise(
            model_input,
            timestep.to(torch.float32).expand(batch),
            condition.hidden,
            condition.pooled,
            time_ids,
            lora_id,
            region_inputs,
        )
        if request.uses_guidance:
            uncond, text = noise.chunk(2)
            noise = uncond + request.guidance_scale * (text - uncond)
        latents = scheduler.step(noise, timestep, latents, **step_kwargs, return_dict=False)[0]
        if on_step is not None:
            on_step(index + 1, len(timesteps))

    images = executor.decode_latents(latents / spec.vae_scaling_factor)
    return (images / 2 + 0.5).clamp(0, 1).to(torch.float32)
