"""Common (non-customised) concepts for the G-Aug and R-Aug augmentations.

Users may give folders of common-concept images (`--common cat=photos/cats`). Without them, the
base model itself draws a few images of each concept's class word ("a photo of a dog") through the
project's own sampling loop — the frozen base model's idea of the class is exactly what the
customised concept must stay distinguishable from.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.models.loading import BaseModel
from clif_serve.runtime.images import to_uint8
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from clif_serve.training.config import CommonSource
from clif_serve.training.data import load_folder
from clif_serve.training.samples import CommonImages


def load_commons(sources: Sequence[CommonSource], min_size: int) -> list[CommonImages]:
    """Read the user's common-concept folders (same checks as concept folders)."""
    return [CommonImages(s.word, load_folder(s.folder, f"common {s.word}", min_size)[1]) for s in sources]


def generate_commons(base: BaseModel, words: Sequence[str], count: int, seed: int, steps: int = 20) -> list[CommonImages]:
    """`count` images of "a photo of a <word>" per word, drawn by the base model."""
    pipeline = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec))
    commons = []
    for offset, word in enumerate(dict.fromkeys(words)):
        request = GenerationRequest(f"a photo of a {word}", steps=steps, seed=seed + offset, num_images=count)
        images = to_uint8(pipeline.generate(request))
        commons.append(CommonImages(word, [Image.fromarray(image) for image in images]))
    return commons
