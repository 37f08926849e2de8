"""The one optimisation loop every stage runs: AdamW, gradient clipping, mixed precision, progress
bar, JSON-lines loss log and resumable checkpoints.

Randomness is drawn from a generator seeded by (seed, stage, step), so a resumed run draws exactly
the batches, noise and timesteps the uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from clif_serve.training.checkpoint import Checkpoint, SavedState

LossFn = Callable[[torch.Generator], dict[str, torch.Tensor]]


@dataclass
class Stage:
    """One stage to run: `loss_fn(generator)` returns named terms; their sum (key `loss`) is minimised."""

    name: str
    index: int
    steps: int
    lr: float
    trainables: dict[str, torch.nn.Parameter]
    loss_fn: LossFn


@dataclass(frozen=True)
class LoopSettings:
    """Settings shared by every stage of a run."""

    seed: int
    device: torch.device
    mixed_precision: str
    max_grad_norm: float
    weight_decay: float
    checkpoint_every: int
    log_file: Path


def step_generator(seed: int, stage_index: int, step: int) -> torch.Generator:
    """The CPU generator of one optimisation step."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage_index * 100_003 + step)


def autocast(settings: LoopSettings):
    """An autocast context for the mixed-precision flag (a no-op for "no")."""
    if settings.mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.float16 if settings.mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=settings.device.type, dtype=dtype)


def restore(stage: Stage, saved: SavedState | None, optimizer: torch.optim.Optimizer) -> int:
    """Copy a checkpoint of this stage into the trainables and optimizer; return the step to start at."""
    if saved is None or saved.stage != stage.name:
        return 0
    with torch.no_grad():
        for name, parameter in stage.trainables.items():
            parameter.copy_(saved.tensors[name])
    optimizer.load_state_dict(saved.optimizer)
    return saved.step


def run_stage(
    stage: Stage,
    settings: LoopSettings,
    checkpoint: Checkpoint,
    saved: SavedState | None = None,
    all_trainables: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Optimise `stage.trainables` for `stage.steps` steps; return the logged records of this call.

    `all_trainables` (default: the stage's own) is what checkpoints save, so a checkpoint taken in
    any stage holds the whole trainable state.
    """
    parameters = list(stage.trainables.values())
    optimizer = torch.optim.AdamW(parameters, lr=stage.lr, weight_decay=settings.weight_decay)
    start = restore(stage, saved, optimizer)
    saved_tensors = all_trainables if all_trainables is not None else stage.trainables
    records = []
    started = time.perf_counter()
    with tqdm(total=stage.steps, initial=min(start, stage.steps), desc=f"stage {stage.name}", unit="step") as bar:
        for step in range(start, stage.steps):
            with autocast(settings):
                terms = stage.loss_fn(step_generator(settings.seed, stage.index, step))
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            optimizer.step()
            record = {"stage": stage.name, "step": step + 1, **{k: float(v.detach()) for k, v in terms.items()}}
            record["elapsed_s"] = round(time.perf_counter() - started, 4)
            records.append(record)
            with settings.log_file.open("a") as log:
                log.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            bar.update(1)
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == stage.steps:
                checkpoint.save(stage.name, step + 1, saved_tensors, optimizer)
    return records
