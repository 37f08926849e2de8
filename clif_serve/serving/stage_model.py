"""Triton Python-backend model of one ONNX stage: one onnxruntime run per dynamic batch.

The stage is the model's name; its tensors are the deployment's stage signature (the manifest
`clif-serve repo` copied next to model.py). `unet_lora` with adapters also takes `lora_id`, which
names each request's LoRA set; a request without it (or with an empty one) runs without adapter.
Every request is checked alone (`StageRequestCheck`) before it joins the batch's onnxruntime run,
so a bad request fails alone and its batch-mates are answered. `unet_bank` takes `lora_id` too and
runs the requests of different LoRA sets together, with its resident bank (`ServedBank`).

The model's device is its instance's (`KIND_GPU` instances run onnxruntime's CUDA EP on their GPU;
`clif-serve repo --device cuda` writes them with `FORCE_CPU_ONLY_INPUT_TENSORS: no`, so BLS inputs
arrive in the memory they were sent in and go to onnxruntime by device pointer). Not run on a GPU.
"""

from __future__ import annotations

from clif_serve.contract.stages import UNET_BANK
from clif_serve.runtime.ort_device import OrtDevice
from clif_serve.serving.backend_utils import error_response, inputs_of, response
from clif_serve.serving.context import model_context
from clif_serve.serving.signatures import LORA_ID_INPUT
from clif_serve.serving.stage_requests import StageRequestCheck
from clif_serve.serving.stage_runner import StageRunner


class StageModel:
    """A stage (text encoder, UNet, VAE decoder) run by onnxruntime."""

    def initialize(self, args: dict) -> None:
        context = model_context(args)
        deployment = context.folder().deployment
        signature = deployment.signature(context.name)
        served = {entry["name"] for entry in context.config["input"]}
        takes_lora_id = LORA_ID_INPUT in served
        adapters, self.bank = None, None
        self.device = OrtDevice.parse(context.device)
        if context.name == UNET_BANK:
            from clif_serve.serving.lora_bank import ServedBank

            self.bank = ServedBank(context, self.device)
        elif takes_lora_id:
            from clif_serve.serving.lora_adapters import adapter_cache

            adapters = adapter_cache(context).run_options
        self.check = StageRequestCheck(deployment, context.name, LORA_ID_INPUT if takes_lora_id else None)
        self.input_names = [*self.check.tensor_names, *([LORA_ID_INPUT] if takes_lora_id else [])]
        self.runner = StageRunner(
            context.version_dir / context.parameters.model_file,
            signature.input_names,
            signature.output_names,
            context.parameters.ort_settings(),
            adapter_options=adapters,
            resident=self.bank.values if self.bank is not None else None,
            device=self.device,
        )

    def execute(self, requests):
        responses: list = [None] * len(requests)
        feeds, adapters, members = [], [], []
        for index, request in enumerate(requests):
            try:
                feed, adapter = self.check(inputs_of(request, self.input_names, self.device))
            except Exception as exc:  # this request alone fails; the batch runs without it
                responses[index] = error_response(exc)
                continue
            feeds.append(feed)
            adapters.append(adapter)
            members.append(index)
        run = self.runner.run(feeds, adapters) if self.bank is None else self.bank.run(self.runner, feeds, adapters)
        for index, result in zip(members, run, strict=True):
            responses[index] = error_response(result) if isinstance(result, Exception) else response(result)
        return responses
