"""Triton `config.pbtxt` files from the templates in top-level `model_repo/`.

A template holds what does not depend on the model (backend or platform, scheduling, instance
groups, default parameters); this module fills in the name, the tensors (from the export's
`ModelSpec` or from `protocol`), batch sizes and parameters, using Triton's own `ModelConfig`
protobuf (shipped with tritonclient) so every file written is a complete, valid config that the
server accepts with `--disable-auto-complete-config`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from clif_serve.errors import ModelFolderError
from clif_serve.serving.protocol import Field


def read_config(path: str | Path) -> pb.ModelConfig:
    """Parse a `config.pbtxt` (or a template) into a ModelConfig."""
    file = Path(path)
    try:
        return text_format.Parse(file.read_text(), pb.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ModelFolderError(f"{file}: not a readable Triton model config ({exc})") from exc


def write_config(config: pb.ModelConfig, path: str | Path) -> Path:
    """Write a ModelConfig as text protobuf."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text_format.MessageToString(config))
    return target


def config_type(triton_type: str) -> str:
    """The model-config enum name of a Triton data type (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if triton_type == "BYTES" else f"TYPE_{triton_type}"


def _fill_tensor(message, field: Field) -> None:
    message.name = field.name
    message.data_type = pb.DataType.Value(config_type(field.triton_type))
    message.dims.extend(field.dims)
    if field.reshape is not None:
        message.reshape.shape.extend(field.reshape)
        # An empty reshape must still be present: mark the submessage as set.
        message.reshape.SetInParent()


def set_tensors(config: pb.ModelConfig, inputs: Iterable[Field], outputs: Iterable[Field]) -> None:
    """Replace the config's inputs and outputs."""
    del config.input[:]
    del config.output[:]
    for field in inputs:
        message = config.input.add()
        _fill_tensor(message, field)
        message.optional = field.optional
    for field in outputs:
        _fill_tensor(config.output.add(), field)


def set_parameters(config: pb.ModelConfig, parameters: Mapping[str, object]) -> None:
    """Set string parameters (Triton parameters are strings); existing keys are overwritten."""
    for key, value in parameters.items():
        config.parameters[key].string_value = str(value)


def model_config(
    template: str | Path,
    name: str,
    inputs: Iterable[Field],
    outputs: Iterable[Field],
    max_batch_size: int | None = None,
    instances: int | None = None,
    queue_delay_us: int | None = None,
    parameters: Mapping[str, object] | None = None,
    instance_kind: str | None = None,
) -> pb.ModelConfig:
    """A complete config for model `name` from a template; None keeps the template's value.

    `instance_kind`: KIND_CPU or KIND_GPU for every instance group."""
    config = read_config(template)
    config.name = name
    set_tensors(config, inputs, outputs)
    if max_batch_size is not None:
        config.max_batch_size = max_batch_size
    for group in config.instance_group:
        if instances is not None:
            group.count = instances
        if instance_kind is not None:
            group.kind = pb.ModelInstanceGroup.Kind.Value(instance_kind)
    if queue_delay_us is not None and config.HasField("dynamic_batching"):
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    set_parameters(config, parameters or {})
    return config
