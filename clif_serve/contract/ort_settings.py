"""onnxruntime session settings: the ONE place that turns clif-serve's choices into `SessionOptions`.

The in-process executor (`OrtExecutor`), the served stage models (`StageRunner`) and the
exporter's parity check build their sessions from an `OrtSettings`, so a served stage and the
in-process pipeline run the same graph with the same thread pool behaviour. It lives in the
contract, below export, runtime and serving, because all three read it. Importing this module imports neither onnxruntime nor torch
(the CLI and every served model's process read `SPINNING`).

Spinning (`spinning`): onnxruntime's intra-op worker threads can busy-wait for work instead of
sleeping. Three policies:

* `"run"` (default): workers spin while a run is in progress and stop the moment it returns
  (`session.force_spinning_stop`). Between the many small operators of one UNet call no worker
  goes to sleep, so no wake-up is paid per operator; between calls the cores are free for the
  sampling loop and the other stage processes.
* `"off"`: workers always sleep when idle; every parallel operator wakes them again. On virtual
  machines a wake-up of an idle vCPU is expensive: on the 2-core Intel Xeon (KVM) the served UNet
  stage's call took 1.11-1.28x the in-process one with this policy (docs/performance.md).
* `"always"`: onnxruntime's own default; workers keep spinning for a while after a run returns,
  taking the cores from whatever runs next (the scheduler step, another stage's process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clif_serve.lora.cache import DEFAULT_WAIT_SECONDS

if TYPE_CHECKING:
    import onnxruntime as ort

# The policies of the module docstring.
SPINNING = ("run", "off", "always")


@dataclass(frozen=True)
class OrtSettings:
    """Session settings. Thread counts of 0 leave the choice to onnxruntime (one per physical core).

    `inter_op_threads` only matter with `parallel` (independent graph nodes run concurrently);
    `spinning` is one of `SPINNING` (module docstring); `io_binding` makes the executors bind their
    tensors' memory on the host instead of calling `run` (in process and the served stages; CUDA stages
    always bind, adapter runs never do).
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    parallel: bool = False
    spinning: str = "run"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    io_binding: bool = False
    adapter_capacity: int = 16
    bank_wait_seconds: float = DEFAULT_WAIT_SECONDS

    def __post_init__(self) -> None:
        if self.spinning not in SPINNING:
            raise ValueError(f"spinning must be one of {', '.join(SPINNING)}, got {self.spinning!r}")

    def session_options(self) -> ort.SessionOptions:
        """SessionOptions with these settings, full graph optimisation and error-only logging."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        spin = "0" if self.spinning == "off" else "1"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if self.spinning == "run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Zero-initialised LoRA inputs would otherwise warn once per input at session start.
        options.log_severity_level = 3
        return options
