"""Triton Python-backend model of one ONNX stage: one onnxruntime run per dynamic batch.

Config parameters (written by `clif-serve repo`): `model_file` (the ONNX file in the version
folder), `intra_op_threads`, and for `unet_lora` `adapter_input` (the input naming each
request's LoRA adapter) and `concept_store` (where the adapters are).
"""

from __future__ import annotations

from clif_serve.serving.backend_utils import error_response, inputs_of, model_paths, response
from clif_serve.serving.stage import OnnxStage


class StageModel:
    """A stage (text encoder, UNet, VAE decoder) run by onnxruntime."""

    def initialize(self, args: dict) -> None:
        config, parameters, version_dir, repo_root = model_paths(args)
        self.adapter_input = parameters.get("adapter_input", "")
        adapters = None
        if self.adapter_input:
            from clif_serve.serving.lora_adapters import adapter_loader

            adapters = adapter_loader(version_dir, repo_root, parameters)
        self.input_names = [entry["name"] for entry in config["input"] if entry["name"] != self.adapter_input]
        self.stage = OnnxStage(
            version_dir / parameters["model_file"],
            self.input_names,
            [entry["name"] for entry in config["output"]],
            intra_op_threads=int(parameters.get("intra_op_threads") or 0),
            adapter_loader=adapters,
        )

    def _adapters(self, requests) -> list[str] | None:
        if not self.adapter_input:
            return None
        return [
            inputs_of(r, [self.adapter_input])[self.adapter_input].reshape(-1)[0].decode() for r in requests
        ]

    def execute(self, requests):
        feeds = [inputs_of(request, self.input_names) for request in requests]
        results = self.stage.run(feeds, self._adapters(requests))
        return [
            error_response(result) if isinstance(result, Exception) else response(result)
            for result in results
        ]
