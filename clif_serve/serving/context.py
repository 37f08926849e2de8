"""What a Python-backend model learns at initialisation: its name, config, typed parameters and folders.

Free of Triton's `triton_python_backend_utils`, so the library code the models call (and tests)
can take a `ModelContext` outside the stub too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clif_serve.contract.folder import ExportFolder, read_folder
from clif_serve.serving.parameters import ModelParameters


@dataclass(frozen=True)
class ModelContext:
    """What a Python-backend model learns at initialisation: its name, config, parameters and folders."""

    name: str
    config: dict
    parameters: ModelParameters
    version_dir: Path
    repo_root: Path
    # Where the instance runs: "cpu", or "cuda:N" for a KIND_GPU instance on GPU N (a torch device string).
    device: str = "cpu"

    def folder(self) -> ExportFolder:
        """The export manifest (the `Deployment`) and tokenizers `clif-serve repo` copied next to model.py."""
        return read_folder(self.version_dir)


def model_context(args: dict) -> ModelContext:
    """The context of the model being initialised, from the `args` Triton passes to `initialize`."""
    config = json.loads(args["model_config"])
    model_dir = Path(args["model_repository"])
    return ModelContext(
        name=args["model_name"],
        config=config,
        parameters=ModelParameters.from_config(config.get("parameters", {})),
        version_dir=model_dir / args["model_version"],
        repo_root=model_dir.parent,
        device=instance_device(args.get("model_instance_kind", "CPU"), args.get("model_instance_device_id", "0")),
    )


def instance_device(kind: str, device_id: str) -> str:
    """The torch device string of a model instance from Triton's `model_instance_kind` / `_device_id`."""
    return f"cuda:{int(device_id or 0)}" if kind.upper().endswith("GPU") else "cpu"
