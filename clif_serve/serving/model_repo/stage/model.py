"""Triton Python-backend model of one ONNX stage; the work is in clif_serve.serving.stage_model."""

from clif_serve.serving.stage_model import StageModel as TritonPythonModel  # noqa: F401
