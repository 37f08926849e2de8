"""An Executor wrapper that records how long each stage call of the inner executor takes."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

from clif_serve.runtime.executor import Executor

TEXT_ENCODER, UNET_STEP, VAE_DECODE = "text_encoder", "unet_step", "vae_decode"


class TimedExecutor(Executor):
    """Delegates to `inner` and keeps per-stage wall times (ms) in `samples`."""

    def __init__(self, inner: Executor):
        self.inner = inner
        self.spec = inner.spec
        self.device = inner.device
        self.samples: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def _timed(self, stage: str):
        start = time.perf_counter()
        yield
        self.samples[stage].append((time.perf_counter() - start) * 1000)

    def encode_text(self, encoder_index, input_ids, concept_table):
        with self._timed(TEXT_ENCODER):
            return self.inner.encode_text(encoder_index, input_ids, concept_table)

    def predict_noise(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, lora_id=None):
        with self._timed(UNET_STEP):
            return self.inner.predict_noise(sample, timestep, encoder_hidden_states, text_embeds, time_ids, lora_id)

    def decode_latents(self, latents):
        with self._timed(VAE_DECODE):
            return self.inner.decode_latents(latents)

    def acquire_lora(self, lora):
        return self.inner.acquire_lora(lora)

    def release_lora(self, lora_id):
        self.inner.release_lora(lora_id)

    def reset(self) -> None:
        """Forget the samples taken so far (after warm-up)."""
        self.samples.clear()
