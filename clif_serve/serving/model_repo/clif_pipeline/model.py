"""Triton Python-backend BLS model `clif_pipeline`; the work is in clif_serve.serving.pipeline_model."""

from clif_serve.serving.pipeline_model import PipelineModel as TritonPythonModel  # noqa: F401
