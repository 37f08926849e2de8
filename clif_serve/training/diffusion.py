"""Stages 2 and 3: textual inversion on the diffusion loss, then joint LoRA + embeddings.

The loss is the reference's: VAE latents (sampled from the encoder's distribution, times the
scaling factor), noise added at a uniform random timestep by a DDPM scheduler built from the
model's scheduler config, and MSE between the UNet prediction and the target of the scheduler's
`prediction_type` (ε or v). SDXL gets its pooled embeddings and `(H, W, 0, 0, H, W)` time ids.
The LoRA (peft, rank 16 by default) targets every attention projection in `spec.lora_targets`;
one adapter is trained for the whole concept set and written into every pack of the set.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from clif_serve.concepts.prompt import EncodedPrompts
from clif_serve.lora.weights import LoraWeights
from clif_serve.models.loading import BaseModel
from clif_serve.runtime.sampling import sdxl_time_ids
from clif_serve.training.data import center_square
from clif_serve.training.tables import TextSide

ADAPTER = "clif_set"


def pixel_batch(images: list[Image.Image], size: int) -> torch.Tensor:
    """Resize the short side, centre crop to `size`, scale to [-1, 1]: `[N, 3, size, size]`."""
    batch = [np.asarray(center_square(image, size), dtype=np.float32) for image in images]
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def latent_distribution(base: BaseModel, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of each image, on the CPU (encoded once; sampled every step)."""
    pixels = pixel_batch(images, base.spec.default_image_size).to(base.vae.device, base.vae.dtype)
    posterior = base.vae.encode(pixels).latent_dist
    return posterior.mean.float().cpu(), posterior.std.float().cpu()


def unet_conditioning(base: BaseModel, outputs: list[tuple[torch.Tensor, torch.Tensor]], size: int) -> dict:
    """UNet keyword arguments from the text encoders' outputs (SDXL: concatenated states + pooled + time ids)."""
    if base.spec.kind == "sd15":
        return {"encoder_hidden_states": outputs[0][0]}
    hidden = torch.cat([states for states, _ in outputs], dim=-1)
    pooled = outputs[-1][1]
    time_ids = sdxl_time_ids(size, size, hidden.shape[0]).to(hidden.device, hidden.dtype)
    return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def diffusion_loss_fn(
    base: BaseModel,
    text_side: TextSide,
    encoded: EncodedPrompts,
    image_of_caption: torch.Tensor,
    latents: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
):
    """ε/v-prediction MSE on random (caption, image) pairs; captions index images via `image_of_caption`."""
    scheduler = DDPMScheduler.from_config(base.spec.scheduler_config)
    unet = base.unet
    device = unet.device
    mean, std = latents
    size = base.spec.default_image_size

    def loss_fn(generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(len(image_of_caption), (batch_size,), generator=generator)
        images = image_of_caption[index]
        sample = (mean[images] + std[images] * torch.randn(mean[images].shape, generator=generator))
        sample = sample * base.spec.vae_scaling_factor
        noise = torch.randn(sample.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(sample, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(sample, noise, timesteps)
        else:
            target = noise
        condition = unet_conditioning(base, text_side(encoded, index), size)
        prediction = unet(noisy.to(device, unet.dtype), timesteps.to(device), **condition, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), target.to(device).float())
        return {"loss": loss, "diffusion": loss.detach()}

    return loss_fn


def add_lora(base: BaseModel, rank: int, alpha: float, seed: int) -> dict[str, torch.nn.Parameter]:
    """Add the set's peft LoRA adapter to every attention projection; return its parameters by name.

    peft draws the down projections from torch's global generator; they are drawn from `seed` here,
    so the adapter does not depend on what the process ran before.
    """
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(base.spec.lora_targets))
    device = base.unet.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        base.unet.add_adapter(config, adapter_name=ADAPTER)
    base.unet.set_adapter(ADAPTER)
    return {f"lora.{name}": p for name, p in base.unet.named_parameters() if ADAPTER in name}


def lora_weights(base: BaseModel, rank: int, alpha: float) -> LoraWeights:
    """The trained adapter as `LoraWeights` (peft names without the adapter name, as packs carry them)."""
    tensors = get_peft_model_state_dict(base.unet, adapter_name=ADAPTER)
    return LoraWeights({k: v.detach().to("cpu", torch.float32).clone() for k, v in tensors.items()}, rank, alpha)
