"""Triton Python-backend control model `clif_concepts`: add / remove / list (work in `concept_control`)."""

from __future__ import annotations

import numpy as np

from clif_serve.serving.backend_utils import error_response, inputs_of, response
from clif_serve.serving.concept_control import ConceptControl, resolve_store
from clif_serve.serving.context import model_context
from clif_serve.serving.protocol import CONCEPTS_INPUTS, RESULT_OUTPUT, decode_fields


class ConceptsModel:
    """Validates and stores hot-loaded packs in the concept store shared by every pipeline."""

    def initialize(self, args: dict) -> None:
        context = model_context(args)
        deployment = context.folder().deployment
        parameters = context.parameters
        self.control = ConceptControl(
            resolve_store(parameters.concept_store, context.repo_root, deployment.spec),
            deployment.spec,
            max_pack_bytes=parameters.max_pack_bytes,
            routing=deployment.routing(parameters.lora_adapters),
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = inputs_of(request, [field.name for field in CONCEPTS_INPUTS])
                reply = self.control.handle(**decode_fields(inputs, CONCEPTS_INPUTS))
                responses.append(response({RESULT_OUTPUT: np.array([reply.to_json()], dtype=np.object_)}))
            except Exception as exc:  # every request gets an answer; the model keeps serving
                responses.append(error_response(exc))
        return responses
