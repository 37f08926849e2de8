"""Resumable training state: trainable tensors and AdamW state in safetensors, progress in JSON.

`OUT/checkpoint/state.safetensors` holds every trainable tensor (`tables.<i>`, `lora.<param>`) and
the optimizer's per-parameter state (`optim.<i>.<name>`); its metadata holds the stage, the step,
the optimizer's param groups and the settings key the state belongs to. One file, written to a
temporary name and renamed, so a crash never leaves tensors and progress out of step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from clif_serve.errors import InputError

STATE_FILE = "state.safetensors"


@dataclass
class SavedState:
    """What a checkpoint holds."""

    stage: str
    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{name}": value.detach().to("cpu").contiguous()
        for index, entry in state["state"].items()
        for name, value in entry.items()
    }
    return tensors, state["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


class Checkpoint:
    """The checkpoint folder of one output directory, tied to one settings key."""

    def __init__(self, folder: Path, key: str):
        self.folder = Path(folder)
        self.key = key

    def clear(self) -> None:
        """Forget any previous state (a run without --resume starts afresh)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def load(self) -> SavedState | None:
        """The saved state, None if there is none; a state made with other settings is an error."""
        file = self.folder / STATE_FILE
        if not file.is_file():
            return None
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata()
        if meta.get("key") != self.key:
            raise InputError(
                "resume",
                f"the checkpoint in {self.folder} was made with other settings (model, concepts, stages, "
                "objective, rates, batch sizes or seed); rerun with those settings or without --resume",
            )
        tensors = load_file(str(file))
        optimizer = _optimizer_state(tensors, json.loads(meta["param_groups"]))
        return SavedState(meta["stage"], int(meta["step"]), tensors, optimizer)

    def save(self, stage: str, step: int, trainables: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Write the state to a temporary file and rename it into place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        optim_tensors, groups = _optimizer_tensors(optimizer)
        tensors = {name: value.detach().to("cpu", torch.float32).contiguous() for name, value in trainables.items()}
        meta = {"key": self.key, "stage": stage, "step": str(step), "param_groups": json.dumps(groups)}
        tmp = self.folder / f".{STATE_FILE}.tmp"
        save_file({**tensors, **optim_tensors}, str(tmp), metadata=meta)
        os.replace(tmp, self.folder / STATE_FILE)
