"""Tracing a stage to ONNX with the dynamo exporter, and reading facts back from the graph."""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

from clif_serve.export.traces import StageTrace

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.FLOAT16: "float16",
}


def trace(stage: StageTrace, opset: int) -> torch.onnx.ONNXProgram:
    """Export `stage.module` with dynamic axes; inputs listed in `zero_default_inputs` get zero initializers."""
    # The exporter logs one warning per torchvision operator it cannot register; torchvision is not used.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    dynamic_shapes = stage.dynamic_shapes
    parameters = inspect.signature(stage.module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        dynamic_shapes = (dynamic_shapes,)  # torch.export wants one entry for `*inputs`
    with warnings.catch_warnings():
        # Deprecation chatter from inside torch.export, and notes that equal dims share one name.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        program = _export(stage, opset, dynamic_shapes)
    add_zero_initializers(program.model, stage.zero_default_inputs)
    return program


def _export(stage: StageTrace, opset: int, dynamic_shapes) -> torch.onnx.ONNXProgram:
    return torch.onnx.export(
        stage.module,
        stage.example,
        dynamo=True,
        opset_version=opset,
        input_names=list(stage.input_names),
        output_names=list(stage.output_names),
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )


def add_zero_initializers(model: ir.Model, names: tuple[str, ...]) -> None:
    """Give graph inputs zero-valued initializers of the same name (size 1 on dynamic axes).

    Such inputs may be omitted at run time (IR >= 4 overridable initializers), so `unet_lora` runs
    as the base UNet without an adapter, and an onnxruntime adapter overrides them.
    """
    inputs = {value.name: value for value in model.graph.inputs}
    for name in names:
        value = inputs[name]
        shape = [d if isinstance(d, int) else 1 for d in value.shape]
        value.const_value = ir.tensor(np.zeros(shape, np.float32), name=name)
        model.graph.register_initializer(value)


def initializer_arrays(model: ir.Model) -> dict[str, np.ndarray]:
    """Every initializer of a traced graph as a numpy array."""
    return {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}


def _describe(value: onnx.ValueInfoProto) -> dict:
    dims = [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
    return {
        "name": value.name,
        "dtype": _ONNX_DTYPES.get(value.type.tensor_type.elem_type, "other"),
        "shape": dims,
    }


def describe_io(path: Path, hide: tuple[str, ...] = ()) -> dict:
    """Inputs and outputs of a saved model (name, dtype, shape with symbolic dims) and its dynamic axes."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [_describe(value) for value in graph.input if value.name not in hide]
    outputs = [_describe(value) for value in graph.output]
    dynamic = {
        item["name"]: {str(axis): d for axis, d in enumerate(item["shape"]) if isinstance(d, str)}
        for item in inputs + outputs
    }
    return {"inputs": inputs, "outputs": outputs, "dynamic_axes": {k: v for k, v in dynamic.items() if v}}
