"""Files of other tools imported into packs draw what diffusers draws with them, and packs exported draw themselves.

Each test writes a file the way the tool that makes it does (no hub here, so no downloaded file):
diffusers' textual-inversion scripts (`{token: tensor}` through safetensors' `save_file` or
`torch.save`), Automatic1111 (`Embedding.save`: a `torch.save`d dict with `string_to_param`),
kohya sd-scripts (`{"emb_params": ...}`; LoRA named `lora_unet_<path>` with `lora_down` / `lora_up` /
`alpha`, paths taken from the model's modules as sd-scripts' `create_modules` does, SDXL through
the sgm block numbering), diffusers' LoRA files (peft's `get_peft_model_state_dict` +
`StableDiffusionPipeline.save_lora_weights`, with and without `lora_adapter_metadata`). Then the
imported pack's image from clif-serve's PyTorch pipeline is compared with diffusers' own pipeline
after `load_textual_inversion` / `load_lora_weights` of the same file: same base, seed and request.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from clif_serve.concepts.pack import ConceptPack
from clif_serve.concepts.registry import ConceptRegistry
from clif_serve.concepts.textual_inversion import export_textual_inversion, import_textual_inversion
from clif_serve.diffusers import load_pack
from clif_serve.lora.formats import kohya_module_names, read_lora, write_diffusers_lora
from clif_serve.lora.math import lora_delta
from clif_serve.models.loading import load_base_model
from clif_serve.runtime.pipeline import ConceptPipeline
from clif_serve.runtime.request import GenerationRequest
from clif_serve.runtime.torch_executor import TorchExecutor
from tests.helpers import random_lora, random_pack

TOLERANCE = 1e-5  # max abs difference of float32 images in [0, 1]
STEPS = 6
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Both pipelines on one torch thread: on a shared 2-core machine two threads run tiny models 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference(base):
    pipeline_class = StableDiffusionPipeline if base.spec.kind == "sd15" else StableDiffusionXLPipeline
    pipe = pipeline_class.from_pretrained(base.path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours(base, packs: list[ConceptPack], prompt: str) -> np.ndarray:
    pipeline = ConceptPipeline(TorchExecutor(base), base.tokenizers, ConceptRegistry(base.spec, packs))
    images = pipeline.generate(GenerationRequest(prompt, negative_prompt="blurry", steps=STEPS, seed=3))
    return images.permute(0, 2, 3, 1).numpy()


def _theirs(pipe, prompt: str) -> np.ndarray:
    return pipe(
        prompt, negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=7.5,
        generator=torch.Generator().manual_seed(3), output_type="np",
    ).images


def _assert_same(ours: np.ndarray, theirs: np.ndarray, label: str) -> None:
    difference = float(np.abs(ours - theirs).max())
    print(f"\nparity {label}: max abs {difference:.2e}")
    assert difference <= TOLERANCE, f"{label}: max abs diff {difference}"


def _table(base, encoder: int = 0, rows: int = 2, seed: int = 0) -> torch.Tensor:
    width = base.spec.text_encoders[encoder].hidden_size
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


# --- textual inversion ---------------------------------------------------------------------------------


def _diffusers_ti(base, folder):
    """diffusers' textual_inversion.py `save_progress`: {placeholder: embeds} with safetensors' save_file."""
    save_file({"<cat-toy>": _table(base)}, str(folder / "learned_embeds.safetensors"), metadata={"format": "pt"})
    return folder / "learned_embeds.safetensors", "<cat-toy>", {}


def _diffusers_ti_bin(base, folder):
    """The same script with --no_safe_serialization: torch.save."""
    torch.save({"<cat-toy>": _table(base)}, folder / "learned_embeds.bin")
    return folder / "learned_embeds.bin", "<cat-toy>", {}


def _a1111_pt(base, folder):
    """Automatic1111's `Embedding.save`."""
    vec = _table(base, rows=3).requires_grad_(True)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "pekora", "step": 1200,
            "sd_checkpoint": "45dee52b", "sd_checkpoint_name": "tiny"}
    torch.save(data, folder / "pekora.pt")
    return folder / "pekora.pt", "pekora", {}


def _a1111_flat(base, folder):
    """An A1111 embedding flattened into safetensors (`string_to_param.*`, the key other loaders expect)."""
    save_file({"string_to_param.*": _table(base, rows=3)}, str(folder / "pekora.safetensors"))
    return folder / "pekora.safetensors", "pekora", {"token": "pekora"}


def _kohya_ti(base, folder):
    """kohya sd-scripts' train_textual_inversion.py: {"emb_params": embeds} with its metadata."""
    save_file({"emb_params": _table(base)}, str(folder / "toy.safetensors"), metadata={"ss_output_name": "toy"})
    return folder / "toy.safetensors", "toy", {"token": "toy"}


@pytest.mark.parametrize("writer", [_diffusers_ti, _diffusers_ti_bin, _a1111_pt, _a1111_flat, _kohya_ti],
                         ids=lambda writer: writer.__name__.strip("_"))
def test_imported_embedding_draws_what_diffusers_draws(writer, tiny_base, tmp_path):
    base = tiny_base
    path, token, load_kwargs = writer(base, tmp_path)
    pack = import_textual_inversion(path, base.spec)
    assert pack.trigger == f"<{token.strip('<>')}>"
    pipe = _reference(base)
    pipe.load_textual_inversion(str(path), **load_kwargs)
    _assert_same(_ours(base, [pack], f"a photo of {pack.trigger} on a beach"),
                 _theirs(pipe, f"a photo of {token} on a beach"), writer.__name__.strip("_"))


def _sdxl_two_files(base, folder):
    """diffusers' textual_inversion_sdxl.py: one {placeholder: embeds} file per text encoder."""
    for index, name in enumerate(("learned_embeds.safetensors", "learned_embeds_2.safetensors")):
        save_file({"<cat-toy>": _table(base, index, seed=index)}, str(folder / name))
    return [folder / "learned_embeds.safetensors", folder / "learned_embeds_2.safetensors"]


def test_sdxl_two_files_or_their_folder_draw_what_diffusers_draws(tiny_xl_base, tmp_path):
    base = tiny_xl_base
    files = _sdxl_two_files(base, tmp_path)
    pack = import_textual_inversion(files, base.spec, name="cat-toy")
    from_folder = import_textual_inversion(tmp_path, base.spec, name="cat-toy")
    for encoder in pack.embeddings:
        assert torch.equal(pack.embeddings[encoder], from_folder.embeddings[encoder])
    pipe = _reference(base)
    pipe.load_textual_inversion(str(files[0]), text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(str(files[1]), text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    prompt = "a photo of <cat-toy> on a beach"
    _assert_same(_ours(base, [pack], prompt), _theirs(pipe, prompt), "sdxl two files")


def test_sdxl_clip_file_draws_what_diffusers_draws(tiny_xl_base, tmp_path):
    """kohya / A1111 SDXL embeddings: one file, clip_l and clip_g; diffusers documents loading each tensor."""
    base = tiny_xl_base
    tables = {"clip_l": _table(base, 0, seed=4), "clip_g": _table(base, 1, seed=5)}
    save_file(tables, str(tmp_path / "toy.safetensors"))
    pack = import_textual_inversion(tmp_path / "toy.safetensors", base.spec)
    pipe = _reference(base)
    pipe.load_textual_inversion(tables["clip_l"], token="<toy>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(tables["clip_g"], token="<toy>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    prompt = "a photo of <toy> on a beach"
    _assert_same(_ours(base, [pack], prompt), _theirs(pipe, prompt), "sdxl clip_l/clip_g")


# --- LoRA ----------------------------------------------------------------------------------------------


def _randomised(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def _diffusers_lora(base, folder, alpha: float | None, text_encoder: bool = False):
    """A LoRA trained with peft and saved as diffusers' training scripts save it: with alpha and
    `lora_adapter_metadata` (newer scripts), or as train_text_to_image_lora.py does (alpha = rank, no
    metadata, `convert_state_dict_to_diffusers` naming: `...to_q.lora.down.weight`)."""
    pipe = _reference(base)
    rank = 4
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(ATTENTION)))
    _randomised(pipe.unet, seed=7)
    state = get_peft_model_state_dict(pipe.unet)
    layers = {"unet_lora_layers": state if alpha is not None else convert_state_dict_to_diffusers(state)}
    if alpha is not None:
        layers["unet_lora_adapter_metadata"] = pipe.unet.peft_config["default"].to_dict()
    if text_encoder:
        inject_adapter_in_model(LoraConfig(r=rank, target_modules=["q_proj", "v_proj"]), pipe.text_encoder)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(pipe.text_encoder)
    type(pipe).save_lora_weights(str(folder), **layers)
    return folder / "pytorch_lora_weights.safetensors"


def _kohya_names(unet, kind: str) -> dict[str, str]:
    """diffusers module path -> kohya's module path, from the UNet's structure (sd-scripts numbering for SDXL)."""
    if kind == "sd15":
        return {name: name for name, _ in unet.named_modules()}
    renamed = {"mid_block.attentions.0": "middle_block.1"}
    for side, sgm, index in (("down_blocks", "input_blocks", 1), ("up_blocks", "output_blocks", 0)):
        for block_index, block in enumerate(getattr(unet, side)):
            for layer in range(len(block.resnets)):  # one sgm block per resnet (+ its attention)
                if getattr(block, "attentions", None):
                    renamed[f"{side}.{block_index}.attentions.{layer}"] = f"{sgm}.{index}.1"
                index += 1
            index += 1 if side == "down_blocks" and block.downsamplers else 0  # a downsampler is a block of its own
    return renamed


def _kohya_lora(base, path, block_dims: bool = False, alphas: bool = False, everything: bool = False):
    """sd-scripts' networks/lora.py: every Linear/Conv2d child of each Transformer2DModel gets
    `lora_unet_<name>_<child>` with lora_down, lora_up and an alpha buffer, saved in fp16.
    Without `everything`, only the attention projections (an include pattern). `block_dims`: ranks per
    block (up blocks rank 2); `alphas`: cross-attention modules get alpha 1 (diffusers 0.42 drops such
    per-module alphas of kohya UNet LoRAs: its alpha_pattern keeps the attention-processor names)."""
    unet = _reference(base).unet
    names = _kohya_names(unet, base.spec.kind)
    generator = torch.Generator().manual_seed(11)
    state = {}
    for name, module in unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        for child_name, child in module.named_modules():
            if not isinstance(child, torch.nn.Linear) or not (everything or child_name.endswith(ATTENTION)):
                continue
            rank = 2 if block_dims and name.startswith("up_blocks") else 4
            alpha = 1.0 if alphas and "attn2" in child_name else 2.0
            lora_name = f"lora_unet.{names.get(name, name)}.{child_name}".replace(".", "_")
            state[f"{lora_name}.lora_down.weight"] = (torch.randn(rank, child.in_features, generator=generator) * 0.3).half()
            state[f"{lora_name}.lora_up.weight"] = (torch.randn(child.out_features, rank, generator=generator) * 0.3).half()
            state[f"{lora_name}.alpha"] = torch.tensor(alpha).half()
    if everything:
        state["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 32).half()
    save_file(state, str(path))
    return path


LORA_CASES = {
    "diffusers": lambda base, folder: _diffusers_lora(base, folder, alpha=8.0),
    "diffusers-no-metadata": lambda base, folder: _diffusers_lora(base, folder, alpha=None),
    "kohya": lambda base, folder: _kohya_lora(base, folder / "kohya.safetensors"),
    "kohya-block-dims": lambda base, folder: _kohya_lora(base, folder / "kohya.safetensors", block_dims=True),
}


@pytest.mark.parametrize("kind", ["tiny", "tiny-xl"])
@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_imported_lora_draws_what_diffusers_draws(case, kind, tmp_path):
    base = load_base_model(kind)  # a private copy: clif-serve's PyTorch executor adds peft adapters
    path = LORA_CASES[case](base, tmp_path)
    imported = read_lora(path, base.spec)
    assert imported.format == case.split("-")[0]
    assert imported.folded == (case == "kohya-block-dims")  # ranks differ: padded to one
    if case == "diffusers":
        assert (imported.lora.rank, imported.lora.alpha) == (4, 8.0)
    pack = replace(random_pack(base, "joe", seed=2), lora=imported.lora)
    pipe = _reference(base)
    load_pack(pipe, replace(pack, lora=None))
    pipe.load_lora_weights(str(path))
    prompt = "a photo of <joe> on a beach"
    _assert_same(_ours(base, [pack], prompt), _theirs(pipe, prompt), f"{kind} {case} LoRA")


def test_per_module_alphas_and_ranks_are_folded_exactly(tiny_base, tmp_path):
    """What sd-scripts' LoRAModule adds to a module's output, alpha / dim * up(down(x)), is the pack's update."""
    base = tiny_base
    path = _kohya_lora(base, tmp_path / "mixed.safetensors", block_dims=True, alphas=True)
    imported = read_lora(path, base.spec)
    assert imported.folded and imported.lora.rank == 4
    state = load_file(str(path))
    for kohya, module in kohya_module_names(base.spec).items():
        down, up = (state[f"{kohya}.lora_{side}.weight"].double() for side in ("down", "up"))
        expected = float(state[f"{kohya}.alpha"]) / down.shape[0] * (up @ down)
        torch.testing.assert_close(lora_delta(imported.lora, module).double(), expected, atol=1e-6, rtol=0)


def test_text_encoder_and_other_modules_are_refused_naming_the_key(tiny_base, tmp_path):
    base = tiny_base
    kohya = _kohya_lora(base, tmp_path / "full.safetensors", everything=True)
    with pytest.raises(Exception, match=r"lora_te_text_model.*text-encoder LoRA"):
        read_lora(kohya, base.spec)
    imported = read_lora(kohya, base.spec, drop_unsupported=True)
    assert any("ff_net" in key for key in imported.dropped) and len(imported.lora.modules) == len(base.spec.lora_targets)
    diffusers_file = _diffusers_lora(base, tmp_path, alpha=8.0, text_encoder=True)
    with pytest.raises(Exception, match=r"^text_encoder\..*lora_A.weight: is a text-encoder LoRA tensor"):
        read_lora(diffusers_file, base.spec)


# --- export --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tiny", "tiny-xl"])
def test_exported_pack_draws_itself_in_diffusers(kind, tmp_path):
    base = load_base_model(kind)  # a private copy: clif-serve's PyTorch executor adds peft adapters
    pack = replace(random_pack(base, "joe", seed=5), lora=random_lora(base, rank=4, alpha=2.0, seed=8))
    prompt = "a photo of <joe> on a beach"
    ours = _ours(base, [pack], prompt)

    from_files = _reference(base)
    embeddings = export_textual_inversion(pack, tmp_path / "joe.safetensors", layout="token")
    for path, suffix in zip(embeddings, ("", "_2"), strict=False):  # SDXL: learned_embeds + learned_embeds_2
        from_files.load_textual_inversion(
            str(path), text_encoder=getattr(from_files, f"text_encoder{suffix}"), tokenizer=getattr(from_files, f"tokenizer{suffix}")
        )
    from_files.load_lora_weights(str(write_diffusers_lora(pack.lora, tmp_path / "joe-lora.safetensors")))
    _assert_same(ours, _theirs(from_files, prompt), f"{kind} exported files")

    with_helper = _reference(base)
    load_pack(with_helper, pack)
    _assert_same(ours, _theirs(with_helper, prompt), f"{kind} load_pack")
