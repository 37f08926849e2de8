"""Triton Python-backend control model `clif_concepts`; the work is in clif_serve.serving.concepts_model."""

from clif_serve.serving.concepts_model import ConceptsModel as TritonPythonModel  # noqa: F401
