"""The parameters of the Python-backend models, as one typed value.

`clif-serve repo` writes a `ModelParameters` into the `parameters` of every Python-backend model's
config (`to_config`); each model decodes it once at initialisation (`from_config`). Triton
parameters are strings: the types live here and nowhere else, and so do the defaults (the
template configs carry none). What a deployment *is* (stages, routing, concept rows, limits) is
not a parameter: every model reads it from the export manifest copied next to its `model.py`.

For raw clients, `clif_pipeline`'s config also *publishes* what a request gets unasked and may
ask for (`request_parameters`): `default.<input>` for every optional input with a default,
`limit.<name>` for every request limit of the deployment, and `format.<input>` for the inputs whose
elements are structured (`regions`: JSON objects). They are derived from
`GenerationRequest` and `Deployment.limits`, written for readers of the config
(`GET /v2/models/clif_pipeline/config`), and never read back: the models use the deployment itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, get_type_hints

from clif_serve.concepts.limits import DEFAULT_MAX_CONCEPTS, DEFAULT_MAX_PACK_BYTES
from clif_serve.contract.folder import ONNX_FILE
from clif_serve.contract.ort_settings import OrtSettings
from clif_serve.errors import ModelFolderError

if TYPE_CHECKING:
    from clif_serve.contract.deployment import Deployment
    from clif_serve.contract.requests import RequestLimits
    from clif_serve.contract.routing import LoraRouting

DEFAULT_PREFIX = "default."
LIMIT_PREFIX = "limit."
FORMAT_PREFIX = "format."
PUBLISHED_PREFIXES = (DEFAULT_PREFIX, LIMIT_PREFIX, FORMAT_PREFIX)
# The python backend's own parameter (read by Triton, not by the models): "no" hands a model its
# inputs in the memory they were sent in (GPU tensors of BLS calls stay on the GPU).
FORCE_CPU_ONLY_INPUT_TENSORS = "FORCE_CPU_ONLY_INPUT_TENSORS"


@dataclass(frozen=True)
class ModelParameters:
    """Settings of the Python-backend models; each model uses the fields that concern it."""

    # Stage models: the ONNX file in the version folder, onnxruntime's intra-op threads (0: default)
    # and its worker threads' spinning policy (one of clif_serve.contract.ort_settings.SPINNING).
    model_file: str = ONNX_FILE
    intra_op_threads: int = 0
    ort_spinning: str = OrtSettings.spinning
    # Concept store folder (absolute, or relative to the repository root; "" = the base model's default).
    concept_store: str = ""
    # Whether unet_lora takes LoRA adapters (python backend); False serves it only as the base UNet
    # of a merged export, and packs of other LoRA sets are refused.
    lora_adapters: bool = True
    # Whether clif_pipeline takes regional requests (where the export has region slots). False leaves
    # out unet_lora where only regions reach it (one UNet session less: a full-size SDXL served on a
    # 24 GiB machine); regional requests are then refused naming `regions`.
    regions: bool = True
    # LoRA adapters a unet_lora instance keeps built (least recently used dropped first).
    adapter_capacity: int = 16
    # Largest concept pack `clif_concepts` accepts (and every model reads from the store), in bytes.
    max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES
    # Concepts the store may hold (hot-loads beyond it are refused naming `store`).
    max_concepts: int = DEFAULT_MAX_CONCEPTS

    def routing(self, deployment: Deployment) -> LoraRouting:
        """The UNet routing of `deployment` served with these parameters (adapters, regions)."""
        return deployment.routing(self.lora_adapters, self.regions)

    def limits(self, deployment: Deployment) -> RequestLimits:
        """The request limits served: the deployment's, with no regions when regions are off."""
        return deployment.limits if self.regions else replace(deployment.limits, max_regions=0)

    def ort_settings(self) -> OrtSettings:
        """The onnxruntime session settings of a stage model (the in-process executor's type)."""
        return OrtSettings(intra_op_threads=self.intra_op_threads, spinning=self.ort_spinning)

    def to_config(self) -> dict[str, str]:
        """As Triton config parameters (strings)."""
        return {key: _text(value) for key, value in asdict(self).items()}

    @classmethod
    def from_config(cls, parameters: dict) -> ModelParameters:
        """From a model config's `parameters` (JSON form: `{key: {"string_value": ...}}`); unknown keys are
        errors, absent keys keep their defaults, published request facts (`default.*`, `limit.*`) and the
        python backend's own `FORCE_CPU_ONLY_INPUT_TENSORS` are skipped."""
        hints = get_type_hints(cls)
        known = {field.name for field in fields(cls)}
        parameters = {
            key: value
            for key, value in parameters.items()
            if not key.startswith(PUBLISHED_PREFIXES) and key != FORCE_CPU_ONLY_INPUT_TENSORS
        }
        unknown = sorted(set(parameters) - known)
        if unknown:
            raise ModelFolderError(f"unknown model parameters {unknown}; this clif-serve knows {sorted(known)}")
        values = {}
        for key, entry in parameters.items():
            text = entry.get("string_value", "") if isinstance(entry, dict) else str(entry)
            values[key] = _parse(key, text, hints[key])
        return cls(**values)


def request_parameters(deployment: Deployment, parameters: ModelParameters) -> dict[str, str]:
    """The request defaults and limits `clif_pipeline` publishes in its config (written, never read back)."""
    # Imported here: this module is read by every model's process and by the CLI at start.
    from clif_serve.runtime.request import GenerationRequest
    from clif_serve.serving.protocol import INPUT_FORMATS, PIPELINE_INPUTS

    filled = GenerationRequest(prompt="-").validated(deployment.spec)  # the defaults, sizes resolved
    defaults = {field.name: getattr(filled, field.name) for field in PIPELINE_INPUTS if field.optional}
    # One-value defaults only: an absent negative prompt (None) or an empty list has no value to publish.
    published = {
        DEFAULT_PREFIX + name: _text(value) for name, value in defaults.items() if isinstance(value, (int, float, str))
    }
    published.update({LIMIT_PREFIX + key: _text(value) for key, value in asdict(parameters.limits(deployment)).items()})
    published.update({FORMAT_PREFIX + name: text for name, text in INPUT_FORMATS.items()})
    return published


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parse(key: str, text: str, kind) -> object:
    try:
        if kind is bool:
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        return kind(text)
    except ValueError as exc:
        raise ModelFolderError(f"model parameter {key}: {text!r} is not a {kind.__name__}") from exc
