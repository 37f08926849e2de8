"""Options of `clif-serve repo` (kept free of heavy imports: the CLI reads the defaults at start)."""

from __future__ import annotations

from dataclasses import dataclass

from clif_serve.errors import InputError

BACKENDS = ("python", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class RepoOptions:
    """How to build a repository (defaults suit the CPU server of nvidia-pytriton)."""

    backend: str = "python"
    pipeline_instances: int = 4
    stage_instances: int = 1
    # Dynamic-batching queue delays: the text encoders run once per request, so waiting a little
    # there lets concurrent requests share a batch; UNet calls queue up by themselves under load.
    text_encoder_delay_us: int = 2000
    unet_delay_us: int = 0
    intra_op_threads: int = 0
    max_pack_bytes: int | None = None  # None: the pack format's default limit
    concept_store: str = ""

    def check(self) -> None:
        """Raise InputError naming a bad option."""
        if self.backend not in BACKENDS:
            raise InputError("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("pipeline_instances", "stage_instances", "max_pack_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("text_encoder_delay_us", "unet_delay_us", "intra_op_threads"):
            if getattr(self, name) < 0:
                raise InputError(name, f"must be >= 0, got {getattr(self, name)}")
