"""ConceptPipeline: request -> prompt expansion -> sampling loop on an executor -> images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.prompt import PromptEncoder
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.errors import InputError
from clif_serve.runtime.executor import Executor
from clif_serve.runtime.request import GenerationRequest, RequestLimits
from clif_serve.runtime.sampling import Conditioning, StepCallback, encode_conditioning, sample


def lora_of(packs: Sequence[ConceptPack]):
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
        limits: RequestLimits = RequestLimits(),
    ):
        self.executor = executor
        self.spec = executor.spec
        self.registry = registry if registry is not None else ConceptRegistry(executor.spec)
        self.prompt_encoder = PromptEncoder(tokenizers, executor.spec)
        self.limits = limits

    def conditioning(
        self, request: GenerationRequest, concepts: Mapping[str, ConceptPack]
    ) -> tuple[Conditioning, Conditioning | None, list[ConceptPack]]:
        """Encode prompt and negative prompt in one text-encoder batch; list the packs they use."""
        zero_negative = request.negative_prompt is None and self.spec.force_zeros_for_empty_prompt
        texts, fields = [request.prompt], ["prompt"]
        if request.uses_guidance and not zero_negative:
            texts.append(request.negative_prompt or "")
            fields.append("negative_prompt")
        encoded = self.prompt_encoder.encode(texts, concepts, fields)
        both = encode_conditioning(self.executor, encoded)
        positive = both.take(0)
        negative = None
        if request.uses_guidance:
            negative = positive.zeros_like() if zero_negative else both.take(1)
        by_name = {pack.name: pack for pack in concepts.values()}
        used = dict.fromkeys(name for names in encoded.concepts for name in names)
        return positive, negative, [by_name[name] for name in used]

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> torch.Tensor:
        """Images `[N, 3, H, W]` in [0, 1] for a request; unknown triggers and bad fields raise InputError."""
        request = request.validated(self.spec, self.limits)
        positive, negative, packs = self.conditioning(request, self.registry.snapshot())
        lora = lora_of(packs)
        lora_id = self.executor.load_lora(lora) if lora is not None else None
        return sample(self.executor, request, positive, negative, lora_id=lora_id, on_step=on_step)
