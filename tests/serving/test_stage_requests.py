"""Per-request checks of the stage models, from the deployment contract (no literals): a bad request
is refused naming its tensor before it could join (and fail) a batch.

On the real server, with batch-mates generating meanwhile: test_server.py::test_bad_stage_requests_fail_alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from clif_serve.errors import InputError
from clif_serve.serving.signatures import LORA_ID_INPUT
from clif_serve.serving.stage_requests import StageRequestCheck
from tests.helpers import tiny_deployment


@pytest.fixture(scope="module")
def deployment(tiny_base):
    return tiny_deployment(tiny_base.spec)


def text_request(deployment, batch=2, ids=None):
    encoder = deployment.spec.text_encoders[0]
    rows = deployment.served_concept_rows
    input_ids = np.zeros((batch, encoder.max_length), np.int64) if ids is None else ids
    return {"input_ids": input_ids, "concept_table": np.zeros((batch, rows, encoder.hidden_size), np.float32)}


def unet_request(deployment, pixels=64, batch=2):
    spec = deployment.spec
    latent = pixels // spec.vae_scale_factor
    return {
        "sample": np.zeros((batch, spec.latent_channels, latent, latent), np.float32),
        "timestep": np.full(batch, 500.0, np.float32),
        "encoder_hidden_states": np.zeros((batch, spec.max_length, spec.text_encoders[0].hidden_size), np.float32),
    }


def test_good_requests_pass(deployment):
    feed, adapter = StageRequestCheck(deployment, "text_encoder")(text_request(deployment))
    assert set(feed) == {"input_ids", "concept_table"} and adapter is None
    lora = StageRequestCheck(deployment, "unet_lora", LORA_ID_INPUT)
    request = unet_request(deployment) | {LORA_ID_INPUT: np.array([[b"0123456789abcdef"]] * 2, np.object_)}
    assert lora(request)[1] == "0123456789abcdef"
    assert lora(unet_request(deployment) | {LORA_ID_INPUT: np.array([[b""]] * 2, np.object_)})[1] is None
    for pixels in (deployment.height.min, deployment.height.max):
        StageRequestCheck(deployment, "unet")(unet_request(deployment, pixels))


def test_token_ids_outside_vocabulary_and_table_are_refused(deployment):
    check = StageRequestCheck(deployment, "text_encoder")
    encoder = deployment.spec.text_encoders[0]
    limit = encoder.vocab_size + deployment.served_concept_rows
    for bad in (10**6, limit, -1):
        ids = np.zeros((2, encoder.max_length), np.int64)
        ids[1, 3] = bad
        with pytest.raises(InputError, match=r"token ids must be in \[0, ") as refused:
            check(text_request(deployment, ids=ids))
        assert refused.value.field == "input_ids"
    ids = np.full((2, encoder.max_length), limit - 1, np.int64)  # the last concept-table row is fine
    check(text_request(deployment, ids=ids))


def _latents(deployment, pixels_h, pixels_w, channels=None, dtype=np.float32):
    spec = deployment.spec
    shape = (2, channels or spec.latent_channels, pixels_h // spec.vae_scale_factor, pixels_w // spec.vae_scale_factor)
    return np.zeros(shape, dtype)


CHANGES = {
    "oversized": (lambda d, r: r | {"sample": _latents(d, 2 * d.height.max, d.width.max)}, "sample", "dimension 2 must be in"),
    "undersized": (lambda d, r: r | {"sample": _latents(d, d.height.min, d.width.min // 2)}, "sample", "dimension 3 must be in"),
    "channels": (lambda d, r: r | {"sample": _latents(d, 64, 64, channels=3)}, "sample", "dimension 1 must be"),
    "rank": (lambda d, r: r | {"sample": _latents(d, 64, 64)[0]}, "sample", "must have 4 dimensions"),
    "dtype": (lambda d, r: r | {"sample": _latents(d, 64, 64, dtype=np.float64)}, "sample", "must be float32"),
    "batch-mismatch": (lambda d, r: r | {"timestep": np.full(3, 1.0, np.float32)}, "timestep", "3 samples"),
    "batch-too-big": (
        lambda d, r: {k: np.concatenate([v] * (d.batch.max // 2 + 1)) for k, v in r.items()}, "sample", "samples is outside"
    ),
    "nan": (
        lambda d, r: r | {"encoder_hidden_states": np.full_like(r["encoder_hidden_states"], np.nan)},
        "encoder_hidden_states",
        "NaN",
    ),
    "missing": (lambda d, r: {k: v for k, v in r.items() if k != "timestep"}, "timestep", "is required"),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_shapes_outside_the_served_profile_are_refused(deployment, case):
    change, field, message = CHANGES[case]
    with pytest.raises(InputError, match=message) as refused:
        StageRequestCheck(deployment, "unet")(change(deployment, unet_request(deployment)))
    assert refused.value.field == field


def test_image_sizes_must_be_multiples_of_the_request_size_multiple(deployment):
    multiple = deployment.limits.size_multiple
    scale = deployment.spec.vae_scale_factor
    if multiple == scale:
        pytest.skip("every latent size is a valid image size for this model")
    request = unet_request(deployment) | {"sample": _latents(deployment, 64 + scale, 64)}
    with pytest.raises(InputError, match="a multiple of"):
        StageRequestCheck(deployment, "unet")(request)


@pytest.mark.parametrize(
    "value",
    [[[b"\xff"]] * 2, [[b"../../etc/passwd"]] * 2, [[b"0123456789ABCDEF"]] * 2, [[b"0123456789abcdef"], [b""]], [[7], [7]]],
    ids=["not-ascii", "path", "upper-case", "mixed-per-sample", "not-bytes"],
)
def test_bad_lora_ids_are_refused(deployment, value):
    check = StageRequestCheck(deployment, "unet_lora", LORA_ID_INPUT)
    with pytest.raises(InputError) as refused:
        check(unet_request(deployment) | {LORA_ID_INPUT: np.array(value, np.object_)})
    assert refused.value.field == LORA_ID_INPUT


def test_vae_latents_follow_the_image_range(deployment):
    check = StageRequestCheck(deployment, "vae_decoder")
    with pytest.raises(InputError) as refused:
        check({"latent_sample": _latents(deployment, 2 * deployment.height.max, 64)})
    assert refused.value.field == "latent_sample"
    check({"latent_sample": _latents(deployment, deployment.height.max, deployment.width.min)})
