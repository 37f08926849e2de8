"""StageRunner: one onnxruntime run per dynamic batch, split back per request (real sessions)."""

from __future__ import annotations

import numpy as np
import pytest

from clif_serve.contract.stages import UNET, UNET_LORA
from clif_serve.serving.stage_runner import StageRunner


def _runner(export, stage: str, **kwargs) -> StageRunner:
    signature = export.deployment.signature(stage)
    return StageRunner(export.onnx_path(stage), signature.input_names, signature.output_names, **kwargs)


def _text_feed(rng, spec, rows, batch=2):
    encoder = spec.text_encoders[0]
    ids = rng.integers(0, encoder.vocab_size, (batch, encoder.max_length))
    ids[:, 3] = encoder.vocab_size + rng.integers(0, rows, batch)  # a concept token per sample
    return {
        "input_ids": ids.astype(np.int64),
        "concept_table": rng.standard_normal((batch, rows, 32), np.float32),
    }


def test_mixed_concept_requests_share_one_run_and_match_separate_runs(tiny_export):
    stage = _runner(tiny_export, "text_encoder")
    rng = np.random.default_rng(0)
    feeds = [_text_feed(rng, tiny_export.spec, rows=8) for _ in range(3)]  # three requests, different tables
    batched = stage.run(feeds)
    for feed, result in zip(feeds, batched, strict=True):
        alone = stage.run([feed])[0]
        assert result["hidden_states"].shape == (2, 77, 32)
        for name in stage.output_names:
            np.testing.assert_allclose(result[name], alone[name], atol=1e-5)
    # A different concept table changes that request's output only.
    assert not np.allclose(batched[0]["hidden_states"], batched[1]["hidden_states"])


def test_requests_of_other_shapes_or_adapters_run_apart(tiny_export):
    stage = _runner(tiny_export, UNET)
    rng = np.random.default_rng(1)

    def feed(size):
        return {
            "sample": rng.standard_normal((2, 4, size, size), np.float32),
            "timestep": np.full(2, 500.0, np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
        }

    small, large = feed(16), feed(32)
    results = stage.run([small, large])
    assert [r["noise_pred"].shape for r in results] == [(2, 4, 16, 16), (2, 4, 32, 32)]
    np.testing.assert_allclose(results[1]["noise_pred"], stage.run([large])[0]["noise_pred"], atol=1e-5)
    # No adapter source: a request naming an adapter fails alone, the others are answered.
    failed, served = stage.run([small, small], adapters=["some-lora", None])
    assert isinstance(failed, Exception) and "no LoRA adapters" in str(failed)
    assert served["noise_pred"].shape == (2, 4, 16, 16)


def test_lora_adapter_requests_get_their_adapter(tiny_export, tiny_base, packs, tmp_path):
    from clif_serve.concepts.store import ConceptStore
    from clif_serve.serving.lora_adapters import AdapterCache

    pack = packs["ann_lora"]
    store = ConceptStore(tmp_path)
    pin = store.pin_lora(pack.lora)  # what the pipeline does before a request's first UNet call
    cache = AdapterCache(store, tiny_base.spec)
    stage = _runner(tiny_export, UNET_LORA, adapter_options=cache.run_options)
    plain = _runner(tiny_export, UNET)
    rng = np.random.default_rng(2)
    feed = {
        "sample": rng.standard_normal((2, 4, 32, 32), np.float32),
        "timestep": np.full(2, 300.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
    }
    lora_feed = feed | _regions(rng, count=0)
    with_lora, without = stage.run([lora_feed, lora_feed], adapters=[pack.lora.set_id, None])
    np.testing.assert_allclose(without["noise_pred"], plain.run([feed])[0]["noise_pred"], atol=1e-5)
    assert np.abs(with_lora["noise_pred"] - without["noise_pred"]).max() > 1e-3
    assert isinstance(stage.run([lora_feed], adapters=["0" * 16])[0], Exception)  # unknown set: refused alone
    pin.release()


def _regions(rng, count: int, slots: int = 4, size: int = 32) -> dict[str, np.ndarray]:
    """Region inputs of a 2-sample request with `count` of the slots used (left/right stripes)."""
    masks = np.zeros((2, slots, size, size), np.float32)
    for region in range(count):
        masks[1, region, :, region * size // count : (region + 1) * size // count] = 1
    return {
        "region_hidden_states": rng.standard_normal((2, slots, 77, 32), np.float32),
        "region_masks": masks,
    }


def test_regional_and_plain_requests_share_one_unet_lora_run(tiny_export):
    """Requests with 0, 2 and 4 regions have one shape: one run, each answer equal to its own run, and a
    request without regions gets what the plain unet gives."""
    stage, plain = _runner(tiny_export, UNET_LORA), _runner(tiny_export, UNET)
    rng = np.random.default_rng(4)
    base = {
        "sample": rng.standard_normal((2, 4, 32, 32), np.float32),
        "timestep": np.full(2, 400.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
    }
    feeds = [base | _regions(rng, count) for count in (0, 2, 4)]
    together = stage.run(feeds)
    for feed, result in zip(feeds, together, strict=True):
        np.testing.assert_allclose(result["noise_pred"], stage.run([feed])[0]["noise_pred"], atol=1e-5)
    alone = stage.run([feeds[0]])[0]["noise_pred"]
    np.testing.assert_array_equal(alone, plain.run([base])[0]["noise_pred"])  # zero masks: exactly plain
    assert np.abs(together[1]["noise_pred"] - together[0]["noise_pred"]).max() > 1e-3
    assert np.abs(together[2]["noise_pred"] - together[1]["noise_pred"]).max() > 1e-3


@pytest.mark.parametrize("rows", [8, 32])
def test_concept_table_rows_do_not_change_results(tiny_export, rows):
    """Zero padding rows are never indexed: the fixed-K padding the executor does is exact."""
    stage = _runner(tiny_export, "text_encoder")
    rng = np.random.default_rng(3)
    feed = _text_feed(rng, tiny_export.spec, rows=1)
    padded = dict(
        feed,
        concept_table=np.concatenate([feed["concept_table"], np.zeros((2, rows - 1, 32), np.float32)], 1),
    )
    np.testing.assert_array_equal(
        stage.run([padded])[0]["hidden_states"], stage.run([feed])[0]["hidden_states"]
    )


def _config_entries(session) -> dict[str, str]:
    """The session's spinning entries that are set (onnxruntime raises for an entry never set)."""
    options = session.get_session_options()
    entries = {}
    for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
        try:
            entries[key] = options.get_session_config_entry(key)
        except RuntimeError:
            pass
    return entries


@pytest.mark.parametrize(
    ("spinning", "entries"),
    [
        ("run", {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}),
        ("off", {"session.intra_op.allow_spinning": "0"}),
        ("always", {"session.intra_op.allow_spinning": "1"}),
    ],
)
def test_served_stage_sessions_take_the_repository_spinning_policy(tiny_export, tmp_path, spinning, entries):
    """`clif-serve repo --ort-spinning` reaches the stage's session, with the in-process executor's options."""
    from google.protobuf.json_format import MessageToDict

    from clif_serve.cli import main
    from clif_serve.contract.ort_settings import OrtSettings
    from clif_serve.runtime.ort_executor import OrtExecutor
    from clif_serve.serving.configs import read_config
    from clif_serve.serving.parameters import ModelParameters

    out = tmp_path / "repo"
    assert main(["repo", "--export", str(tiny_export.root), "--out", str(out), "--ort-spinning", spinning]) == 0
    config = read_config(out / UNET / "config.pbtxt")
    parameters = ModelParameters.from_config(MessageToDict(config, preserving_proto_field_name=True)["parameters"])
    assert parameters.ort_spinning == spinning
    served = _runner(tiny_export, UNET, settings=parameters.ort_settings())
    assert _config_entries(served.session) == entries
    in_process = OrtExecutor(tiny_export, OrtSettings(spinning=spinning)).session(UNET)
    assert _config_entries(in_process) == entries


def test_unknown_spinning_policies_are_refused(tiny_export, tmp_path, capsys):
    from clif_serve.cli import main
    from clif_serve.contract.ort_settings import OrtSettings

    with pytest.raises(ValueError, match="spinning must be one of run, off, always"):
        OrtSettings(spinning="sometimes")
    with pytest.raises(SystemExit) as exited:
        main(["repo", "--export", str(tiny_export.root), "--out", str(tmp_path / "r"), "--ort-spinning", "x"])
    assert exited.value.code == 2 and "--ort-spinning" in capsys.readouterr().err
