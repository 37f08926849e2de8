"""Making new packs from a base model's text side: tokens initialised from a class word.

A pack needs only the tokenizers, the text encoders and the spec (`load_text_model`); a full
`BaseModel` works as well (it is a `TextModel`).
"""

from __future__ import annotations

import torch

from clif_serve.concepts.pack import ConceptPack, default_tokens, validate_name
from clif_serve.errors import InputError
from clif_serve.models.loading import TextModel


def class_word_ids(base: TextModel, word: str, field: str = "class_word") -> list[int]:
    """The single token id of `word` in every tokenizer of the base; several pieces are an error."""
    if not word or not word.strip():
        raise InputError(field, "must be a non-empty word")
    ids = []
    for tokenizer, encoder in zip(base.tokenizers, base.spec.text_encoders, strict=True):
        pieces = tokenizer(word.strip(), add_special_tokens=False).input_ids
        if len(pieces) != 1:
            shown = tokenizer.convert_ids_to_tokens(pieces)
            raise InputError(
                field,
                f"{word!r} is not a single token of the {encoder.name} tokenizer (it splits into {shown}); "
                "pick a common word such as 'person', 'dog' or 'mug'",
            )
        ids.append(pieces[0])
    return ids


def class_word_embeddings(base: TextModel, word: str, num_tokens: int) -> dict[str, torch.Tensor]:
    """`[num_tokens, H]` per text encoder, every row a copy of the class word's token embedding."""
    embeddings = {}
    for token_id, module, encoder in zip(
        class_word_ids(base, word), base.text_encoders, base.spec.text_encoders, strict=True
    ):
        row = module.get_input_embeddings().weight[token_id].detach().to("cpu", torch.float32)
        embeddings[encoder.name] = row.repeat(num_tokens, 1).clone()
    return embeddings


def new_pack(base: TextModel, name: str, class_word: str, num_tokens: int = 2) -> ConceptPack:
    """A pack for `<name>` whose `num_tokens` tokens start from the class word's embedding."""
    validate_name(name)
    pack = ConceptPack(
        name=name,
        trigger=f"<{name}>",
        tokens=default_tokens(name, num_tokens),
        class_word=class_word.strip(),
        base_fingerprint=base.spec.fingerprint,
        embeddings=class_word_embeddings(base, class_word, num_tokens),
    )
    pack.validate_for(base.spec)
    return pack
