"""Triton Python-backend control model `clif_concepts`: add / remove / list (work in `concept_control`).

With an admin key configured (the launcher puts it in the stubs' environment), add and remove
need it as request parameter `clif_admin_key` (`keys.AdminGate`); listing needs only what every
inference call needs (Triton checks the inference key before the request gets here).
"""

from __future__ import annotations

import numpy as np

from clif_serve.serving.backend_utils import error_response, inputs_of, response
from clif_serve.serving.concept_control import ConceptControl, PackPolicy, resolve_store
from clif_serve.serving.context import model_context
from clif_serve.serving.keys import AdminGate, admin_key_from_environment, request_parameters
from clif_serve.serving.protocol import CONCEPTS_INPUTS, RESULT_OUTPUT, decode_fields


class ConceptsModel:
    """Validates and stores hot-loaded packs in the concept store shared by every pipeline."""

    def initialize(self, args: dict) -> None:
        context = model_context(args)
        deployment = context.folder().deployment
        store = resolve_store(context.parameters.concept_store, context.repo_root, deployment.spec)
        self.control = ConceptControl(store, PackPolicy.of(deployment, context.parameters))
        self.gate = AdminGate(admin_key_from_environment())

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                values = decode_fields(inputs_of(request, [field.name for field in CONCEPTS_INPUTS]), CONCEPTS_INPUTS)
                self.gate.check(values["action"], request_parameters(request.parameters()))
                reply = self.control.handle(**values)
                responses.append(response({RESULT_OUTPUT: np.array([reply.to_json()], dtype=np.object_)}))
            except Exception as exc:  # every request gets an answer; the model keeps serving
                responses.append(error_response(exc))
        return responses
