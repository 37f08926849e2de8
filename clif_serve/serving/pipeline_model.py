"""Triton Python-backend BLS model `clif_pipeline`: prompt -> images (work in `service`)."""

from __future__ import annotations

from clif_serve.serving.backend_utils import bls_call, error_response, inputs_of, response
from clif_serve.serving.context import model_context
from clif_serve.serving.protocol import IMAGES_OUTPUT, PIPELINE_INPUTS
from clif_serve.serving.service import ServedPipeline


class PipelineModel:
    """One instance runs one request at a time; concurrent instances meet in the stage batchers."""

    def initialize(self, args: dict) -> None:
        self.service = ServedPipeline(model_context(args), bls_call)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = self.service.handle(inputs_of(request, [field.name for field in PIPELINE_INPUTS]))
                responses.append(response({IMAGES_OUTPUT: images}))
            except Exception as exc:  # every request gets an answer; the model keeps serving
                responses.append(error_response(exc))
        return responses
