"""Prompt expansion into concept-token ids and per-sample concept tables."""

from __future__ import annotations

import pytest
import torch

from clif_serve.concepts.prompt import PromptEncoder
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.errors import InputError
from tests.helpers import random_pack


@pytest.fixture
def setup(tiny_base):
    registry = ConceptRegistry(
        tiny_base.spec,
        [random_pack(tiny_base, "a", seed=1), random_pack(tiny_base, "b", seed=2, num_tokens=3)],
    )
    return PromptEncoder(tiny_base.tokenizers, tiny_base.spec), registry.snapshot(), tiny_base


def test_prompt_without_concepts_matches_the_tokenizer(setup):
    encoder, concepts, base = setup
    encoded = encoder.encode(["a photo of a dog"], concepts)
    expected = base.tokenizers[0]("a photo of a dog", padding="max_length", max_length=77).input_ids
    assert encoded.input_ids[0][0].tolist() == expected
    assert encoded.concept_tables[0].shape == (1, 1, 32), "K >= 1 even without concepts"
    assert not encoded.concept_tables[0].any()


def test_triggers_expand_to_ids_above_the_vocabulary(setup):
    encoder, concepts, base = setup
    vocab = base.spec.text_encoders[0].vocab_size
    encoded = encoder.encode(["a photo of <a> and <b>"], concepts)
    ids = encoded.input_ids[0][0]
    concept_ids = ids[ids >= vocab].tolist()
    assert concept_ids == [vocab + row for row in range(5)], "2 tokens of <a> then 3 of <b>"
    table = encoded.concept_tables[0][0]
    assert torch.equal(table[:2], concepts["<a>"].embeddings["text_encoder"])
    assert torch.equal(table[2:5], concepts["<b>"].embeddings["text_encoder"])
    assert encoded.concepts == (("a", "b"),)
    plain = base.tokenizers[0]("a photo of", add_special_tokens=False).input_ids
    assert ids[1 : 1 + len(plain)].tolist() == plain


def test_repeated_trigger_reuses_its_rows(setup):
    encoder, concepts, base = setup
    encoded = encoder.encode(["<a> next to <a>"], concepts)
    ids = encoded.input_ids[0][0]
    vocab = base.spec.text_encoders[0].vocab_size
    assert (ids >= vocab).sum() == 4
    assert encoded.concept_tables[0].shape[1] == 2


def test_batch_tables_are_per_sample_and_zero_padded(setup):
    encoder, concepts, _ = setup
    encoded = encoder.encode(["<a>", "<b> and <a>", "plain"], concepts)
    tables = encoded.concept_tables[0]
    assert tables.shape == (3, 5, 32)
    assert torch.equal(tables[0, :2], concepts["<a>"].embeddings["text_encoder"])
    assert not tables[0, 2:].any()
    assert torch.equal(tables[1, :3], concepts["<b>"].embeddings["text_encoder"])
    assert torch.equal(tables[1, 3:5], concepts["<a>"].embeddings["text_encoder"])
    assert not tables[2].any()


def test_unknown_trigger_lists_the_known_ones(setup):
    encoder, concepts, _ = setup
    with pytest.raises(InputError, match=r"unknown concept <c>; known concepts: <a>, <b>") as error:
        encoder.encode(["a photo of <c>"], concepts)
    assert error.value.field == "prompt"


def test_field_name_follows_the_prompt(setup):
    encoder, concepts, _ = setup
    with pytest.raises(InputError) as error:
        encoder.encode(["fine", "<zzz>"], concepts, fields=["prompt", "negative_prompt"])
    assert error.value.field == "negative_prompt"


def test_over_long_prompt_is_refused_not_truncated(setup):
    encoder, concepts, _ = setup
    encoder.encode(["dog " * 75], concepts)
    with pytest.raises(InputError, match="76 tokens long after expanding concept triggers; the limit is 75"):
        encoder.encode(["dog " * 74 + "<a>"], concepts)


def test_sdxl_prompts_get_one_table_per_encoder(tiny_xl_base):
    pack = random_pack(tiny_xl_base, "a", seed=3)
    encoder = PromptEncoder(tiny_xl_base.tokenizers, tiny_xl_base.spec)
    encoded = encoder.encode(["a <a>"], {"<a>": pack})
    assert len(encoded.input_ids) == len(encoded.concept_tables) == 2
    assert torch.equal(encoded.concept_tables[1][0], pack.embeddings["text_encoder_2"])
    assert encoded.input_ids[1][0, -1] == tiny_xl_base.spec.text_encoders[1].pad_token_id == 0
