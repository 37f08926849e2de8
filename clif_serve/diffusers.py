"""clif-serve concept packs in plain diffusers: `load_pack(pipe, pack)`.

```python
from diffusers import StableDiffusionPipeline
from clif_serve.concepts.pack import read_pack
from clif_serve.diffusers import load_pack

pipe = StableDiffusionPipeline.from_pretrained("path/to/the/base/model")
load_pack(pipe, read_pack("packs/joe.safetensors"))
image = pipe("a photo of <joe> on the beach").images[0]
```

The pack's tokens go in with `pipe.load_textual_inversion` (once per text encoder), its LoRA with
`pipe.load_lora_into_unet` as the diffusers LoRA file `clif-serve concepts export --lora` writes
would (rank, alpha and modules in the adapter metadata). Packs trained together share one LoRA
set, which is loaded once (adapter `clif-<set id>`). diffusers applies the adapters it has active;
clif-serve refuses prompts mixing different LoRA sets, so use one set at a time here too
(`pipe.set_adapters(...)` chooses).
"""

from __future__ import annotations

from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.textual_inversion import load_into_diffusers
from clif_serve.lora.formats import UNET_PREFIX, diffusers_metadata, diffusers_state_dict


def adapter_name(pack: ConceptPack) -> str | None:
    """The diffusers adapter name `load_pack` gives the pack's LoRA set (None without a LoRA)."""
    return None if pack.lora is None else f"clif-{pack.lora.set_id}"


def load_pack(pipe, pack: ConceptPack) -> None:
    """Load a concept pack (tokens and LoRA) into a diffusers SD1.5 / SDXL pipeline of its base model."""
    pack.validate()
    load_into_diffusers(pipe, pack)
    name = adapter_name(pack)
    if name is None or name in getattr(pipe.unet, "peft_config", {}):
        return
    pipe.load_lora_into_unet(
        diffusers_state_dict(pack.lora),
        network_alphas=None,
        unet=pipe.unet,
        adapter_name=name,
        metadata={UNET_PREFIX + key: value for key, value in diffusers_metadata(pack.lora).items()},
    )
