"""Options of `clif-serve repo` (kept free of heavy imports: the CLI reads the defaults at start)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clif_serve.errors import InputError
from clif_serve.serving.parameters import ModelParameters

BACKENDS = ("python", "onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class RepoOptions:
    """How to build a repository (defaults suit the CPU server of nvidia-pytriton).

    `models` is written into every Python-backend model's config (`ModelParameters`). The defaults
    and the figures they come from are in docs/performance.md ("Repository defaults").
    """

    backend: str = "python"
    # Where the Python-backend models run: cpu, or cuda (KIND_GPU instances: the stage models on
    # onnxruntime's CUDA EP, the pipeline's tensors and sampling loop on the GPU; docs/performance.md
    # section 4). The native backends' stage templates are KIND_GPU whatever this says.
    device: str = "cpu"
    pipeline_instances: int = 4
    stage_instances: int = 1
    # Dynamic-batching queue delays. The text encoders' compute is ~0.3 % of a request (1.25 ms of
    # 388 ms, tiny, 2-core EPYC), so batching them saves nearly nothing, while a delay is paid in
    # full by every request at low load (2.1 ms queued per request at 2000 us); UNet calls of
    # concurrent requests queue up behind the running one and batch by themselves.
    text_encoder_delay_us: int = 0
    unet_delay_us: int = 0
    models: ModelParameters = field(default_factory=ModelParameters)

    @property
    def takes_adapters(self) -> bool:
        """Whether `unet_lora` runs LoRA adapters: the python backend, unless turned off."""
        return self.backend == "python" and self.models.lora_adapters

    def validate(self) -> None:
        """Raise InputError naming a bad option."""
        if self.backend not in BACKENDS:
            raise InputError("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise InputError("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        try:
            self.models.ort_settings()  # the settings' own checks (the spinning policy)
        except ValueError as exc:
            raise InputError("ort_spinning", str(exc)) from None
        values = {
            "pipeline_instances": (self.pipeline_instances, 1),
            "stage_instances": (self.stage_instances, 1),
            "max_pack_bytes": (self.models.max_pack_bytes, 1),
            "adapter_capacity": (self.models.adapter_capacity, 1),
            "max_concepts": (self.models.max_concepts, 1),
            "text_encoder_delay_us": (self.text_encoder_delay_us, 0),
            "unet_delay_us": (self.unet_delay_us, 0),
            "intra_op_threads": (self.models.intra_op_threads, 0),
        }
        for name, (value, low) in values.items():
            if value < low:
                raise InputError(name, f"must be >= {low}, got {value}")
