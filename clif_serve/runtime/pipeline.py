"""ConceptPipeline: request -> prompt expansion -> sampling loop on an executor -> images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.prompt import PromptEncoder, SplitPrompts
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.contract.requests import RequestLimits
from clif_serve.errors import InputError
from clif_serve.lora.weights import LoraWeights
from clif_serve.runtime.executor import Executor
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.sampling import Conditioning, StepCallback, encode_conditioning, sample


def lora_of(packs: Sequence[ConceptPack]) -> LoraWeights | None:
    """The one LoRA set used by a request's concepts (packs trained together share it), or None."""
    loras = {pack.lora.set_id: pack.lora for pack in packs if pack.lora is not None}
    if len(loras) > 1:
        names = ", ".join(pack.name for pack in packs if pack.lora is not None)
        raise InputError("prompt", f"concepts {names} carry different LoRA sets; combine concepts of one set")
    return next(iter(loras.values()), None)


class ConceptPipeline:
    """Multi-concept text-to-image on any executor, with a live concept registry."""

    def __init__(
        self,
        executor: Executor,
        tokenizers: Sequence,
        registry: ConceptRegistry | None = None,
        limits: RequestLimits | None = None,
    ):
        self.executor = executor
        self.spec = executor.spec
        self.registry = registry if registry is not None else ConceptRegistry(executor.spec)
        self.prompt_encoder = PromptEncoder(tokenizers, executor.spec)
        self.limits = limits

    def split(self, request: GenerationRequest, concepts: Mapping[str, ConceptPack]) -> SplitPrompts:
        """The prompts the text encoders see (prompt, and the negative prompt under guidance), split at triggers."""
        texts, fields = [request.prompt], ["prompt"]
        if request.uses_guidance and not self._zero_negative(request):
            texts.append(request.negative_prompt or "")
            fields.append("negative_prompt")
        elif request.negative_prompt is not None:
            # Unused without guidance, but a bad negative prompt is refused all the same.
            self.prompt_encoder.encode([request.negative_prompt], concepts, ["negative_prompt"])
        return self.prompt_encoder.split(texts, concepts, fields)

    def _zero_negative(self, request: GenerationRequest) -> bool:
        """SDXL's zeroed negative conditioning for an absent negative prompt."""
        return request.negative_prompt is None and self.spec.force_zeros_for_empty_prompt

    def conditioning(
        self, request: GenerationRequest, split: SplitPrompts
    ) -> tuple[Conditioning, Conditioning | None]:
        """Encode prompt and negative prompt in one text-encoder batch."""
        both = encode_conditioning(self.executor, self.prompt_encoder.encode(split))
        positive = both.take(0)
        negative = None
        if request.uses_guidance:
            negative = positive.zeros_like() if self._zero_negative(request) else both.take(1)
        return positive, negative

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> torch.Tensor:
        """Images `[N, 3, H, W]` in [0, 1] for a request; unknown triggers and bad fields raise InputError.

        Everything about the request is checked (fields, concepts, the LoRA route) before any stage runs.
        """
        request = request.validated(self.spec, self.limits)
        split = self.split(request, self.registry.snapshot())
        lora_id = self.executor.acquire_lora(lora_of(split.packs()))
        try:
            positive, negative = self.conditioning(request, split)
            return sample(self.executor, request, positive, negative, lora_id=lora_id, on_step=on_step)
        finally:
            self.executor.release_lora(lora_id)
