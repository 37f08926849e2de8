"""Triton Python-backend control model `clif_concepts`: add / remove / list (work in `concept_sync`)."""

from __future__ import annotations

import json

import numpy as np

from clif_serve.serving.backend_utils import error_response, inputs_of, model_paths, response
from clif_serve.serving.concept_sync import ConceptControl, resolve_store
from clif_serve.serving.protocol import CONCEPTS_INPUTS, RESULT_OUTPUT, decode_fields
from clif_serve.serving.service import read_model_folder


class ConceptsModel:
    """Validates and stores hot-loaded packs in the concept store shared by every pipeline."""

    def initialize(self, args: dict) -> None:
        _, parameters, version_dir, repo_root = model_paths(args)
        spec = read_model_folder(version_dir).spec
        self.control = ConceptControl(
            resolve_store(parameters.get("concept_store", ""), repo_root, spec),
            spec,
            max_pack_bytes=int(parameters["max_pack_bytes"]),
            lora_stage=parameters.get("lora_stage", ""),
            merged_lora=parameters.get("merged_lora") or None,
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = inputs_of(request, [field.name for field in CONCEPTS_INPUTS])
                result = self.control.handle(**decode_fields(inputs, CONCEPTS_INPUTS))
                responses.append(
                    response({RESULT_OUTPUT: np.array([json.dumps(result).encode()], dtype=np.object_)})
                )
            except Exception as exc:  # every request gets an answer; the model keeps serving
                responses.append(error_response(exc))
        return responses
