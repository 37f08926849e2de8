"""The exported text encoder's concept table: hot-swappable rows, per-sample concepts in one batch."""

from __future__ import annotations

import pytest
import torch

from clif_serve.concepts.prompt import PromptEncoder
from clif_serve.runtime.ort_executor import OrtExecutor
from clif_serve.runtime.torch_executor import TorchExecutor


@pytest.fixture(scope="module")
def executor(tiny_export):
    return OrtExecutor(tiny_export)


@pytest.fixture(scope="module")
def encoder(tiny_base):
    return PromptEncoder(tiny_base.tokenizers, tiny_base.spec)


def test_swapping_table_rows_changes_concept_prompts_only(executor, encoder, lora_packs):
    concepts = {pack.trigger: pack for pack in lora_packs.values()}
    encoded = encoder.encode(["a photo of <joe> on a beach", "a photo of a dog on a beach"], concepts)
    ids, table = encoded.input_ids[0], encoded.concept_tables[0]
    hidden, pooled = executor.encode_text(0, ids, table)
    swapped = table.clone()
    swapped[0, [0, 1]] = table[0, [1, 0]]  # joe's two token rows change places
    swapped[1] = torch.randn_like(swapped[1])  # rows no token of sample 1 refers to
    hidden_swapped, pooled_swapped = executor.encode_text(0, ids, swapped)
    assert (hidden_swapped[0] - hidden[0]).abs().max() > 1e-2
    assert (pooled_swapped[0] - pooled[0]).abs().max() > 1e-3
    assert torch.equal(hidden_swapped[1], hidden[1]) and torch.equal(pooled_swapped[1], pooled[1])


def test_a_new_concept_needs_no_reexport(executor, encoder, tiny_base, lora_packs):
    """A concept the export never saw runs through the same session, equal to PyTorch."""
    concepts = {pack.trigger: pack for pack in lora_packs.values()}
    encoded = encoder.encode(["<ann> and <rex> at the park"], concepts)
    got = executor.encode_text(0, encoded.input_ids[0], encoded.concept_tables[0])
    want = TorchExecutor(tiny_base).encode_text(0, encoded.input_ids[0], encoded.concept_tables[0])
    for ort_out, torch_out in zip(got, want, strict=True):
        torch.testing.assert_close(ort_out, torch_out, atol=1e-5, rtol=1e-5)


def test_mixed_concept_batch_equals_separate_runs(executor, encoder, lora_packs):
    concepts = {pack.trigger: pack for pack in lora_packs.values()}
    prompts = ["a photo of <joe> on a beach", "<ann> with <rex> in a garden", "a plain landscape"]
    batch = encoder.encode(prompts, concepts)
    together = executor.encode_text(0, batch.input_ids[0], batch.concept_tables[0])
    assert batch.concept_tables[0].shape[1] == 4  # padded to the widest sample (ann 2 + rex 2 rows)
    for index, prompt in enumerate(prompts):
        alone = encoder.encode([prompt], concepts)
        separate = executor.encode_text(0, alone.input_ids[0], alone.concept_tables[0])
        for joint, single in zip(together, separate, strict=True):
            torch.testing.assert_close(joint[index : index + 1], single, atol=1e-6, rtol=1e-6)


def test_sdxl_encoders_take_their_own_tables(tiny_xl_export, tiny_xl_base, xl_packs):
    executor = OrtExecutor(tiny_xl_export)
    pack = xl_packs["joe"]
    encoded = PromptEncoder(tiny_xl_base.tokenizers, tiny_xl_base.spec).encode(
        ["<joe> on a sofa"], {pack.trigger: pack}
    )
    reference = TorchExecutor(tiny_xl_base)
    for index in range(2):
        got = executor.encode_text(index, encoded.input_ids[index], encoded.concept_tables[index])
        want = reference.encode_text(index, encoded.input_ids[index], encoded.concept_tables[index])
        for ort_out, torch_out in zip(got, want, strict=True):
            torch.testing.assert_close(ort_out, torch_out, atol=1e-5, rtol=1e-5)
