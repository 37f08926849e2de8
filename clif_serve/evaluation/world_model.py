"""The world's own text-to-image model, trained once on renders and saved as a diffusers folder.

Built in this order, each part cached under `cache_dir()/worlds/world-<recipe hash>/` as soon as
it is done (a rerun skips finished parts; the UNet resumes from its last checkpoint):

1. **VAE** (`AutoencoderKL`, 3 levels: 64x64 images <-> 16x16x4 latents), L1 + L2 reconstruction
   with a small KL term, on random 32x32 crops of world renders (the net is convolutional);
   the latent scaling factor is set to 1 / std of the training latents, as SD's 0.18215 is.
2. **CLIP** (`CLIPModel`: text tower of the base model's shape, a small ViT), contrastive on
   captioned renders, pairs and lone parts (the region crops stage 1 works with). Its text
   tower becomes the base model's text encoder and the CLIP folder is stage 1's image tower.
3. **UNet** (`UNet2DConditionModel`, 16x16 latents, cross-attention at 8x8 and 4x4), epsilon
   prediction on the world's latents conditioned on the frozen text encoder, 10 % caption
   dropout (for classifier-free guidance), min-SNR-5 loss weighting, AdamW with cosine decay and
   an EMA of the weights (the EMA is what is saved).
4. **Judge** (`clif_serve.evaluation.judge`), on renders only.

Captions: half of the toy phrases the VAE, CLIP and UNet train on are partial ("a striped circle",
"a circle with a square"; `world.partial_caption`), so the model draws a toy from its class word
alone, as a personal concept's prompt starts. VAE, CLIP and judge do not depend on each other and
can be built by separate processes at once (`build_world(parts=...)`).

The base folder is a normal SD1.5-layout diffusers folder (`StableDiffusionPipeline.save_pretrained`)
with the tiny models' tokenizer, so `load_base_model(folder)`, training, export and serving take
it like any checkpoint. Everything is seeded; timings and quality figures go to `world.json`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextModel

from clif_serve.evaluation import judge as judge_module
from clif_serve.evaluation.world import (
    SIZE,
    Scene,
    captioned_scene,
    part_caption,
    random_toy,
    region_image,
    render_single,
)
from clif_serve.models.concept_text_encoder import ConceptTextEncoder
from clif_serve.models.loading import BaseModel, load_base_model
from clif_serve.models.vocab import build_clip_tokenizer
from clif_serve.paths import cache_dir
from clif_serve.training.image_tower import ImageTower
from clif_serve.training.tables import encode_captions

BUILD_FILE = "build.json"
TEXT_HIDDEN = 64


@dataclass(frozen=True)
class WorldRecipe:
    """Everything the world's models depend on; its hash names the cache folder."""

    seed: int = 0
    images: int = 24_000  # renders the VAE and the UNet train on
    clip_images: int = 8_000
    vae_steps: int = 1_500
    clip_steps: int = 1_000
    unet_steps: int = 2_000  # the length of the UNet's learning-rate schedule
    unet_stop: int | None = None  # stop the UNet at this step instead (a world cut short; the schedule is kept)
    judge_steps: int = 2_000  # 1 000 left head-shape accuracy at 0.93 on held-out renders
    unet_batch: int = 64
    unet_lr: float = 1e-3
    judge_held_out: int = 500
    partial_captions: float = 0.5  # share of toy phrases that leave attributes out (world.partial_caption)
    version: str = "1"


# A world small enough for tests and smoke runs: same code, every count tiny (it draws noise).
QUICK_RECIPE = WorldRecipe(images=64, clip_images=64, vae_steps=2, clip_steps=2, unet_steps=2, judge_steps=2,
                           unet_batch=8, judge_held_out=8)


# The recipe fields each component depends on (a component is rebuilt only when one of them changes).
COMPONENT_FIELDS = {
    "vae": ("seed", "images", "vae_steps", "partial_captions"),
    "clip": ("seed", "clip_images", "clip_steps", "partial_captions"),
    "base": ("seed", "images", "vae_steps", "clip_images", "clip_steps", "unet_steps", "unet_batch", "unet_lr", "unet_stop",
             "partial_captions"),
    "judge": ("seed", "judge_steps", "judge_held_out"),
}


@dataclass
class World:
    """The world's component folders under `root`, each named by the hash of what it depends on."""

    root: Path
    recipe: WorldRecipe

    def key(self, component: str) -> str:
        fields = {name: getattr(self.recipe, name) for name in COMPONENT_FIELDS[component]}
        fields = {name: value for name, value in fields.items() if value is not None}  # unset options keep old keys
        text = json.dumps({"version": self.recipe.version, "component": component, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def folder(self, component: str) -> Path:
        return self.root / f"{component}-{self.key(component)}"

    def staging(self, component: str) -> Path:
        return self.root / f".{component}-{self.key(component)}.staging"

    @property
    def base_dir(self) -> Path:
        """The diffusers folder of the world's text-to-image model."""
        return self.folder("base")

    @property
    def clip_dir(self) -> Path:
        """The world's CLIP (CLIPModel layout, with its tokenizer)."""
        return self.folder("clip")

    @property
    def judge_dir(self) -> Path:
        return self.folder("judge")

    def built(self, component: str) -> bool:
        """Whether the component is finished (its folder carries a build record)."""
        return (self.folder(component) / BUILD_FILE).is_file()

    def complete(self) -> bool:
        return all(self.built(name) for name in COMPONENT_FIELDS)

    def report(self) -> dict:
        """The recipe and each component's build record (seconds, and the judge's held-out accuracy)."""
        builds = {name: json.loads((self.folder(name) / BUILD_FILE).read_text()) for name in COMPONENT_FIELDS}
        return {"recipe": asdict(self.recipe), "components": builds}


def _scenes(count: int, seed: int, partial_share: float) -> tuple[list[Scene], list[str]]:
    rng = np.random.default_rng(seed)
    scenes, captions = [], []
    for _ in range(count):
        scene, caption = captioned_scene(rng, partial_share=partial_share)
        scenes.append(scene)
        captions.append(caption)
    return scenes, captions


def _images(scenes: list[Scene]) -> np.ndarray:
    """uint8 `[N, 64, 64, 3]` (kept as bytes: a float copy of the whole pool would not fit in memory)."""
    return np.stack([np.asarray(scene.image) for scene in scenes])


def _cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=SIZE,
    )


def train_vae(images: np.ndarray, steps: int, seed: int, batch_size: int = 32, crop: int = 32) -> AutoencoderKL:
    """Reconstruction training on random crops; sets `scaling_factor` to 1 / std of the latents."""
    torch.manual_seed(seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = _cosine(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    vae.train()
    for _ in tqdm(range(steps), desc="world vae", unit="step"):
        batch = judge_module.to_pixels(images[torch.randint(len(images), (batch_size,), generator=generator).numpy()])
        top, left = (int(v) for v in torch.randint(0, SIZE - crop + 1, (2,), generator=generator))
        batch = batch[:, :, top : top + crop, left : left + crop]
        posterior = vae.encode(batch).latent_dist
        error = vae.decode(posterior.sample(generator=generator)).sample - batch
        loss = error.abs().mean() + error.pow(2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        std = float(vae.encode(judge_module.to_pixels(images[:512])).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def clip_config(vocab_size: int, bos: int, eos: int, pad: int) -> CLIPConfig:
    """The world's CLIP: a 4-layer text tower of width 64 (it becomes the base text encoder), a small ViT."""
    text = dict(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_HIDDEN,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )
    vision = dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        image_size=SIZE, patch_size=8, projection_dim=TEXT_HIDDEN,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=TEXT_HIDDEN)


def clip_pool(count: int, seed: int, partial_share: float) -> tuple[list, list[str]]:
    """Captioned images for CLIP: world scenes (80 %) and lone parts cropped as stage 1 crops regions."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(count):
        if rng.random() < 0.8:
            scene, caption = captioned_scene(rng, partial_share=partial_share)
            images.append(scene.image)
            captions.append(caption)
        else:
            toy = random_toy(rng)
            part = "head" if rng.random() < 0.5 else "body"
            images.append(region_image(render_single(toy, rng), 0, part))
            captions.append(part_caption(toy, part))
    return images, captions


def train_clip(tokenizer, images, captions, steps: int, seed: int, batch_size: int = 128) -> CLIPModel:
    """Contrastive training of the world's CLIP (CLIP's own loss, learned temperature)."""
    torch.manual_seed(seed)
    clip = CLIPModel(clip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id))
    pixels = ImageTower(clip.vision_model, clip.text_projection, 1.0).preprocess(images)
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = _cosine(optimizer, steps, warmup=min(100, steps // 10))
    generator = torch.Generator().manual_seed(seed)
    clip.train()
    for _ in tqdm(range(steps), desc="world clip", unit="step"):
        index = torch.randperm(len(images), generator=generator)[:batch_size]
        loss = clip(input_ids=ids[index], pixel_values=pixels[index], return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return clip.eval().requires_grad_(False)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=16,
    )


def write_base_folder(folder: Path, tokenizer, text_encoder: CLIPTextModel, vae: AutoencoderKL, unet) -> None:
    """Save an SD1.5-layout diffusers folder (DDIM, as the embedded tiny model)."""
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


class UnetTraining:
    """Resumable UNet training: state (weights, EMA, optimizer, step) saved every `every` steps."""

    def __init__(self, base: BaseModel, recipe: WorldRecipe, state_file: Path, every: int = 250):
        self.base, self.recipe, self.state_file, self.every = base, recipe, state_file, every
        self.unet = base.unet.train().requires_grad_(True)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=recipe.unet_lr, weight_decay=1e-2)
        self.schedule = _cosine(self.optimizer, recipe.unet_steps, warmup=min(200, recipe.unet_steps // 10))
        self.step = 0
        if state_file.is_file():
            self._load()

    def _load(self) -> None:
        tensors = load_file(str(self.state_file))
        self.unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        meta = json.loads((self.state_file.with_suffix(".json")).read_text())
        state = {int(i): {n: tensors[f"optim.{i}.{n}"] for n in names} for i, names in meta["optim"].items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.step = meta["step"]
        self.schedule.last_epoch = self.step - 1
        self.schedule.step()

    def _save(self) -> None:
        optimizer = self.optimizer.state_dict()
        tensors = {f"unet.{k}": v.contiguous() for k, v in self.unet.state_dict().items()}
        tensors |= {f"ema.{k}": v.contiguous() for k, v in self.ema.state_dict().items()}
        tensors |= {f"optim.{i}.{n}": v.contiguous() for i, s in optimizer["state"].items() for n, v in s.items()}
        meta = {"step": self.step, "param_groups": optimizer["param_groups"],
                "optim": {str(i): list(s) for i, s in optimizer["state"].items()}}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        save_file(tensors, str(tmp))
        (self.state_file.with_suffix(".json.tmp")).write_text(json.dumps(meta))
        os.replace(tmp, self.state_file)
        os.replace(self.state_file.with_suffix(".json.tmp"), self.state_file.with_suffix(".json"))

    @property
    def last_step(self) -> int:
        """Where training ends: `recipe.unet_stop` when set, else the end of the schedule."""
        return self.recipe.unet_stop if self.recipe.unet_stop is not None else self.recipe.unet_steps

    def run(self, latents: tuple[torch.Tensor, torch.Tensor], captions: list[str]) -> UNet2DConditionModel:
        """Train to `last_step`; return the EMA UNet (eval mode, gradients off)."""
        base, recipe = self.base, self.recipe
        last = self.last_step
        spec = base.spec.text_encoders[0]
        encoder = ConceptTextEncoder(base.text_encoders[0], spec)
        scheduler = DDPMScheduler.from_config(base.spec.scheduler_config)
        snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
        mean, std = latents
        scale = base.spec.vae_scaling_factor
        with tqdm(total=last, initial=self.step, desc="world unet", unit="step") as bar:
            while self.step < last:
                generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + self.step)
                index = torch.randint(len(captions), (recipe.unet_batch,), generator=generator)
                texts = ["" if drop else captions[int(i)] for i, drop in zip(index, torch.rand(len(index), generator=generator) < 0.1, strict=True)]
                encoded = encode_captions(base, texts, [])
                with torch.no_grad():
                    hidden = encoder(encoded.input_ids[0], encoded.concept_tables[0])[0]
                sample = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scale
                noise = torch.randn(sample.shape, generator=generator)
                timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(index),), generator=generator)
                prediction = self.unet(scheduler.add_noise(sample, noise, timesteps), timesteps, hidden).sample
                weight = torch.clamp(snr[timesteps], max=5.0) / snr[timesteps]
                loss = (weight * F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
                self.optimizer.step()
                self.schedule.step()
                self.step += 1
                decay = min(0.999, (1 + self.step) / (10 + self.step))
                with torch.no_grad():
                    for average, current in zip(self.ema.parameters(), self.unet.parameters(), strict=True):
                        average.lerp_(current, 1 - decay)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                bar.update(1)
                if self.step % self.every == 0 or self.step == last:
                    self._save()
        return self.ema.eval()


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (the UNet samples a latent from them at each step)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(judge_module.to_pixels(images[start : start + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def _finish(staging: Path, target: Path, started: float, **figures) -> None:
    """Write the component's build record and move it into place (a folder without one is unfinished)."""
    (staging / BUILD_FILE).write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1), **figures}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


# What each component is trained from: the base model's UNet trains on the VAE's latents and the CLIP's text tower.
NEEDS = {"vae": (), "clip": (), "base": ("vae", "clip"), "judge": ()}


def build_world(recipe: WorldRecipe = WorldRecipe(), root: Path | None = None, parts: tuple[str, ...] | None = None) -> World:
    """Build what is missing of the world under `root` (default: `cache_dir()/worlds`); return it.

    `parts` (default: all, in `COMPONENT_FIELDS` order) builds only those components, so independent
    ones (vae, clip, judge) can be built by separate processes at once; "base" needs vae and clip built.
    """
    world = World(Path(root) if root is not None else cache_dir() / "worlds", recipe)
    parts = tuple(COMPONENT_FIELDS) if parts is None else parts
    unknown = [part for part in parts if part not in COMPONENT_FIELDS]
    if unknown:
        raise ValueError(f"parts: unknown world components {unknown}; known: {', '.join(COMPONENT_FIELDS)}")
    missing = [need for part in parts for need in NEEDS[part] if need not in parts and not world.built(need)]
    if missing:
        raise ValueError(f"parts: building {', '.join(parts)} needs {', '.join(dict.fromkeys(missing))} built first")
    if all(world.built(part) for part in parts):
        return world
    world.root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer()
    pool: list = []  # the training scenes as (images, captions), rendered when first needed

    def scene_pool() -> tuple[np.ndarray, list[str]]:
        if not pool:
            scenes, captions = _scenes(recipe.images, recipe.seed, recipe.partial_captions)
            pool.extend((_images(scenes), captions))
        return pool[0], pool[1]

    if "vae" in parts and not world.built("vae"):
        started, staging = time.perf_counter(), world.staging("vae")
        train_vae(scene_pool()[0], recipe.vae_steps, recipe.seed).save_pretrained(staging)
        _finish(staging, world.folder("vae"), started)
    if "clip" in parts and not world.built("clip"):
        started, staging = time.perf_counter(), world.staging("clip")
        pool_images, pool_captions = clip_pool(recipe.clip_images, recipe.seed + 1, recipe.partial_captions)
        clip = train_clip(tokenizer, pool_images, pool_captions, recipe.clip_steps, recipe.seed)
        clip.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _finish(staging, world.clip_dir, started)
    if "base" in parts and not world.built("base"):
        started, staging = time.perf_counter(), world.staging("base")
        vae = AutoencoderKL.from_pretrained(world.folder("vae")).eval().requires_grad_(False)
        if not (staging / "model_index.json").is_file():
            torch.manual_seed(recipe.seed)
            text_encoder = CLIPModel.from_pretrained(world.clip_dir).text_model
            write_base_folder(staging, tokenizer, text_encoder, vae, build_unet())
        base = load_base_model(staging)
        state = world.root / f"progress-{world.key('base')}" / "unet.safetensors"
        training = UnetTraining(base, recipe, state)
        if training.step < training.last_step:
            images, captions = scene_pool()
            unet = training.run(encode_latents(vae, images), captions)
        else:  # resumed at its last step (a world cut short at a saved checkpoint)
            unet = training.ema.eval()
        shutil.rmtree(staging / "unet")
        unet.save_pretrained(staging / "unet")
        _finish(staging, world.base_dir, started, unet_steps_done=training.step)  # seconds: this build's share only
        shutil.rmtree(state.parent, ignore_errors=True)
    if "judge" in parts and not world.built("judge"):
        started, staging = time.perf_counter(), world.staging("judge")
        net = judge_module.train_judge(recipe.judge_steps, recipe.seed + 2)
        rng = np.random.default_rng(recipe.seed + 3)
        accuracy = judge_module.judge_accuracy(net, [judge_module.judge_scene(rng) for _ in range(recipe.judge_held_out)])
        judge_module.save_judge(net, staging)
        _finish(staging, world.judge_dir, started, held_out=accuracy)
    return world
