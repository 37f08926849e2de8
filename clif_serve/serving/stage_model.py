"""Triton Python-backend model of one ONNX stage: one onnxruntime run per dynamic batch.

The stage is the model's name; its tensors are the deployment's stage signature (the manifest
`clif-serve repo` copied next to model.py). `unet_lora` with adapters also takes `lora_id`, which
names each request's LoRA set; a request without it (or with an empty one) runs without adapter.
"""

from __future__ import annotations

from clif_serve.serving.backend_utils import error_response, inputs_of, response
from clif_serve.serving.context import model_context
from clif_serve.serving.signatures import LORA_ID_INPUT
from clif_serve.serving.stage_runner import StageRunner


class StageModel:
    """A stage (text encoder, UNet, VAE decoder) run by onnxruntime."""

    def initialize(self, args: dict) -> None:
        context = model_context(args)
        signature = context.folder().deployment.signature(context.name)
        served = {entry["name"] for entry in context.config["input"]}
        self.takes_lora_id = LORA_ID_INPUT in served
        adapters = None
        if self.takes_lora_id:
            from clif_serve.serving.lora_adapters import adapter_cache

            adapters = adapter_cache(context).run_options
        self.input_names = signature.input_names
        self.runner = StageRunner(
            context.version_dir / context.parameters.model_file,
            signature.input_names,
            signature.output_names,
            intra_op_threads=context.parameters.intra_op_threads,
            adapter_options=adapters,
        )

    def _adapter(self, request) -> str | None:
        value = inputs_of(request, [LORA_ID_INPUT]).get(LORA_ID_INPUT)
        if value is None:
            return None
        return value.reshape(-1)[0].decode() or None

    def execute(self, requests):
        feeds = [inputs_of(request, self.input_names) for request in requests]
        adapters = [self._adapter(request) for request in requests] if self.takes_lora_id else None
        results = self.runner.run(feeds, adapters)
        return [
            error_response(result) if isinstance(result, Exception) else response(result)
            for result in results
        ]
