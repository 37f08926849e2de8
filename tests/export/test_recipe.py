"""Export recipes: the four shipped files and validation naming the offending key."""

from __future__ import annotations

import pytest

from clif_serve.errors import InputError
from clif_serve.export.recipe import default_recipe_name, load_recipe, recipe_from_dict


@pytest.mark.parametrize("name", ["tiny", "tiny-xl", "sd15-512", "sdxl-1024"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.name == name and "plain" in recipe.unet_variants
    assert recipe.batch.min <= recipe.batch.opt <= recipe.batch.max
    assert recipe.tensorrt.profiles and recipe.tensorrt.precision == "fp16"


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        "batch = [1, 2, 4]\nheight = [64, 64, 64]\nwidth = [64, 64, 128]\n"
        "concept_rows = [1, 2, 8]\nlora_rank = [1, 4, 8]\n"
    )
    recipe = load_recipe(path)
    assert recipe.name == "mine" and recipe.unet_variants == ("plain",) and recipe.opset == 18
    assert recipe.tensorrt.profiles[0].width.as_list() == [64, 64, 128]


GOOD = {
    "batch": [1, 2, 4],
    "height": [64, 64, 64],
    "width": [64, 64, 64],
    "concept_rows": [1, 2, 8],
    "lora_rank": [1, 4, 8],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch": [2, 1, 4]}, "batch"),
        ({"batch": [1, 1, 1]}, "batch"),
        ({"height": {"min": 64, "max": 64}}, "height"),
        ({"width": [64, 64.5, 128]}, "width"),
        ({"unet_variants": ["lora"]}, "unet_variants"),
        ({"unet_variants": ["plain", "fp8"]}, "unet_variants"),
        ({"precision": "fp16"}, "precision"),
        ({"opset": 11}, "opset"),
        ({"parity_tolerance": 0}, "parity_tolerance"),
        ({"tensorrt": {"precision": "int8"}}, "tensorrt.precision"),
        ({"lora_bank": {"sets": 0}}, "lora_bank.sets"),
        ({"lora_bank": {"rank": 2.5}}, "lora_bank.rank"),
        ({"lora_bank": {"slots": 4}}, "lora_bank"),
        ({"tensorrt": {"workspace_gib": -1}}, "tensorrt.workspace_gib"),
        (
            {"tensorrt": {"profiles": [{"batch": [1, 1, 1], "height": [64, 64, 64]}]}},
            "tensorrt.profiles[0].width",
        ),
        (
            {"tensorrt": {"profiles": [{"batch": [1, 2, 8], "height": [64] * 3, "width": [64] * 3}]}},
            "tensorrt.profiles[0].batch",
        ),
    ],
)
def test_bad_recipes_name_the_key(change, field):
    with pytest.raises(InputError) as info:
        recipe_from_dict({**GOOD, **change}, "bad")
    assert info.value.field == field


def test_bank_variant_gives_unet_bank_of_the_recipe_shape(tiny_base):
    recipe = recipe_from_dict({**GOOD, "unet_variants": ["plain", "bank"], "lora_bank": {"sets": 5, "rank": 8}}, "b")
    deployment = recipe.deployment(tiny_base.spec)
    assert deployment.stages == ("text_encoder", "unet", "unet_bank", "vae_decoder")
    assert (deployment.bank_slots, deployment.bank_rank) == (6, 8), "slot 0 (no LoRA) comes on top of the sets"
    assert type(deployment).from_dict(deployment.to_dict()) == deployment
    signature = deployment.signature("unet_bank")
    assert signature.input_names[-1] == "lora_slot" and signature.inputs[-1].dtype == "int64"
    bank = signature.bank_inputs[0]
    low, _, high = deployment.shape_ranges(bank)
    assert low == high and low[:2] == ((6, 8) if bank.name.endswith("_A") else (6, low[1]))
    routing = deployment.routing(adapters=True)
    assert routing.route("0123456789abcdef").stage == "unet_bank" and routing.route(None).stage == "unet"
    assert deployment.routing(adapters=False).stages == ("unet",), "native backends cannot keep a bank"
    assert recipe.to_dict()["lora_bank"] == {"sets": 5, "rank": 8}
    plain = recipe_from_dict(GOOD, "p").deployment(tiny_base.spec)
    assert not plain.has_unet_bank and "bank_slots" not in plain.axis_ranges()


def test_sizes_must_fit_the_model(tiny_base):
    recipe = recipe_from_dict({**GOOD, "width": [64, 66, 128]}, "odd")
    with pytest.raises(InputError, match="width.*66 is not a multiple of 4"):
        recipe.validate_for(tiny_base.spec)


def test_unknown_recipe_and_bad_toml(tmp_path):
    with pytest.raises(InputError, match="known recipe"):
        load_recipe("sd3-2048")
    broken = tmp_path / "broken.toml"
    broken.write_text("batch = [1, 2")
    with pytest.raises(InputError, match="not valid TOML"):
        load_recipe(broken)


def test_default_recipes(tiny_base, tiny_xl_base):
    assert default_recipe_name("tiny", tiny_base.spec) == "tiny"
    assert default_recipe_name("tiny-xl", tiny_xl_base.spec) == "tiny-xl"
    assert default_recipe_name("/models/sd15", tiny_base.spec) == "sd15-512"
    assert default_recipe_name("/models/sdxl", tiny_xl_base.spec) == "sdxl-1024"
