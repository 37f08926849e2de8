"""ConceptPipeline: request -> prompt expansion -> sampling loop on an executor -> images.

Region prompts are split and encoded with the prompt, in the same text-encoder call (their unknown
concepts and lengths are errors naming `regions`); their concepts count for the request's LoRA set.
"""

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
from clif_serve.runtime.regions import REGIONS_FIELD, pixel_masks
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.sampling import (
    Conditioning,
    RegionConditioning,
    StepCallback,
    encode_conditioning,
    make_scheduler,
    sample,
)


def lora_of(packs: Sequence[ConceptPack], field: str = "prompt") -> LoraWeights | None:
    """The one LoRA set used by a request's concepts (packs trained together share it), or None."""
    loras = {pack.lora.set_id: pack.lora for pack in packs if pack.lora is not None}
    if len(loras) > 1:
        names = ", ".join(pack.name for pack in packs if pack.lora is not None)
        raise InputError(field, f"concepts {names} carry different LoRA sets; combine concepts of one set")
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
        # A process's first scheduler imports every scheduler diffusers lists as compatible (scipy among
        # them; 0.7-2 s on 2 cores): made here once, so no request pays it (each Triton pipeline
        # instance is its own process, and its first request paid it before).
        make_scheduler(self.spec)

    def split(self, request: GenerationRequest, concepts: Mapping[str, ConceptPack]) -> SplitPrompts:
        """The prompts the text encoders see, split at triggers: the prompt, the negative prompt under
        guidance, then the region prompts (their errors name `regions` and say which region)."""
        texts, fields, labels = [request.prompt], ["prompt"], [""]
        if request.uses_guidance and not self._zero_negative(request):
            texts.append(request.negative_prompt or "")
            fields.append("negative_prompt")
            labels.append("")
        elif request.negative_prompt is not None:
            # Unused without guidance, but a bad negative prompt is refused all the same.
            self.prompt_encoder.encode([request.negative_prompt], concepts, ["negative_prompt"])
        for index, region in enumerate(request.regions):
            texts.append(region.prompt)
            fields.append(REGIONS_FIELD)
            labels.append(f"region {index}: ")
        return self.prompt_encoder.split(texts, concepts, fields, labels)

    @staticmethod
    def lora(split: SplitPrompts) -> LoraWeights | None:
        """The request's LoRA set: that of the prompts' concepts, which the regions' concepts must share."""
        per_prompt = list(zip(split.fields, split.packs_per_prompt(), strict=True))
        lora_of([pack for field, packs in per_prompt if field != REGIONS_FIELD for pack in packs])
        return lora_of(split.packs(), REGIONS_FIELD)

    def _zero_negative(self, request: GenerationRequest) -> bool:
        """SDXL's zeroed negative conditioning for an absent negative prompt."""
        return request.negative_prompt is None and self.spec.force_zeros_for_empty_prompt

    def conditioning(
        self, request: GenerationRequest, split: SplitPrompts
    ) -> tuple[Conditioning, Conditioning | None, RegionConditioning | None]:
        """Encode prompt, negative prompt and region prompts in one text-encoder batch; the regions get
        their latent masks."""
        encoded = encode_conditioning(self.executor, self.prompt_encoder.encode(split))
        positive = encoded.take(0)
        negative = None
        if request.uses_guidance:
            negative = positive.zeros_like() if self._zero_negative(request) else encoded.take(1)
        if not request.regions:
            return positive, negative, None
        masks = pixel_masks(request.regions, request.height, request.width, len(request.regions))
        hidden = encoded.hidden[-len(request.regions) :]
        return positive, negative, RegionConditioning.of(hidden, masks, self.spec.vae_scale_factor)

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> torch.Tensor:
        """Images `[N, 3, H, W]` in [0, 1] for a request; unknown triggers and bad fields raise InputError.

        Everything about the request is checked (fields, concepts, regions, the UNet route) before any
        stage runs.
        """
        request = request.validated(self.spec, self.limits)
        split = self.split(request, self.registry.snapshot())
        regional = bool(request.regions)
        lora_id = self.executor.acquire_lora(self.lora(split), regional)
        try:
            positive, negative, regions = self.conditioning(request, split)
            return sample(self.executor, request, positive, negative, lora_id, on_step, regions)
        finally:
            self.executor.release_lora(lora_id, regional)
