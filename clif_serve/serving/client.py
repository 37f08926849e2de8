"""gRPC client of a clif-serve Triton server: generation and concept hot-load.

Errors come back as the exceptions the in-process library raises: a request field the server
refused is an `InputError` (a refused pack a `PackError`) naming that field; a call without the
key it needs is `AccessDenied`; anything else is a `ServerError`. Keys (`ClientKeys`) default to
the environment (`CLIF_SERVE_API_KEY_FILE`, `CLIF_SERVE_ADMIN_KEY_FILE`): the inference key goes
with every call as a header, the admin key with concept add/remove as a request parameter.

A client may hold several replicas of one deployment (`clif_serve.serving.replicas`): each call
goes to the one with the fewest of this client's calls in flight, and generations, concept adds
and listings are sent again to another replica when one is down or not ready (removals are not:
a removal that reached a replica before it failed would be refused as unknown on the next).
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clif_serve.concepts.pack import ConceptPack, pack_to_bytes
from clif_serve.errors import ClifServeError, InputError, PackError
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.keys import ADMIN_KEY_PARAMETER, AccessDenied, ClientKeys
from clif_serve.serving.protocol import (
    ACTION_ADD,
    ACTION_LIST,
    ACTION_REMOVE,
    CONCEPTS_INPUTS,
    CONCEPTS_MODEL,
    IMAGES_OUTPUT,
    PIPELINE_INPUTS,
    PIPELINE_MODEL,
    REGIONS_FIELD,
    RESULT_OUTPUT,
    Field,
    encode_regions,
)
from clif_serve.serving.replicas import ReplicaPool

_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\]\s*")
_FIELD_ERROR = re.compile(r"^([A-Za-z_][\w.\-\[\]]*): (.+)$", re.DOTALL)
_RESTRICTED = re.compile(r"^This (?:protocol|API) is restricted, expecting header '([^']+)'")
# A replica stopping, starting or unloaded: Triton's answers before it runs the request.
_NOT_SERVING = re.compile(r"Server not ready|Server is stopping|unknown model|is not ready", re.IGNORECASE)
_NUMPY_TYPES = {
    "BYTES": np.object_,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "BOOL": np.bool_,
}


class ServerError(ClifServeError):
    """The server failed a request for a reason other than a bad field (or could not be reached)."""


def _tensor(field: Field, value: object) -> grpcclient.InferInput:
    kind = field.triton_type
    if kind == "BYTES":
        value = value if isinstance(value, bytes) else str(value).encode("utf-8")
    elif kind.startswith("INT") and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise InputError(field.name, f"must be an integer, got {type(value).__name__}")
    elif kind == "FP32" and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise InputError(field.name, f"must be a number, got {type(value).__name__}")
    try:
        array = np.array([value], dtype=_NUMPY_TYPES[kind])
    except OverflowError as exc:
        raise InputError(field.name, f"{value} does not fit in {kind}") from exc
    tensor = grpcclient.InferInput(field.name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def _inputs(fields: Sequence[Field], values: Mapping[str, object]) -> list[grpcclient.InferInput]:
    """The one-value inputs among `fields` that `values` sets."""
    return [
        _tensor(field, values[field.name]) for field in fields if field.one_value and values.get(field.name) is not None
    ]


def _regions_input(regions) -> list[grpcclient.InferInput]:
    if not regions:
        return []
    array = encode_regions(regions)
    tensor = grpcclient.InferInput(REGIONS_FIELD, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return [tensor]


def _raise_as_library_error(exc: InferenceServerException, error: type[InputError]) -> None:
    message = _REQUEST_ID.sub("", exc.message() or str(exc))
    restricted = _RESTRICTED.match(message)
    if restricted:
        raise AccessDenied(restricted.group(1), f"the server needs this key header: {message}") from exc
    if exc.status() == "StatusCode.INVALID_ARGUMENT":
        match = _FIELD_ERROR.match(message)
        if match:
            kind = AccessDenied if match.group(1) == ADMIN_KEY_PARAMETER else error
            raise kind(match.group(1), match.group(2)) from exc
    raise ServerError(f"{exc.status() or 'error'}: {message}") from exc


def replica_unavailable(exc: InferenceServerException) -> bool:
    """Whether a failed call says the replica is down or not serving (worth another replica), not that
    the request is wrong or lacks a key."""
    message = _REQUEST_ID.sub("", exc.message() or str(exc))
    if _RESTRICTED.match(message) or exc.status() == "StatusCode.INVALID_ARGUMENT":
        return False  # a missing key (Triton answers it with UNAVAILABLE too) or a refused field
    return exc.status() == "StatusCode.UNAVAILABLE" or bool(_NOT_SERVING.search(message))


class ClifClient:
    """A connection to a clif-serve deployment: the `host:port` of a server's gRPC endpoint, or of several
    replicas (a sequence, or one comma-separated string).

    `keys`: the keys to send (default: `ClientKeys.resolve()`, i.e. from the environment).
    `timeout_s`: the limit of one attempt (a call that fails over makes one attempt per replica).
    `retry_after_s`: how long a replica that was found down is avoided.
    """

    def __init__(
        self,
        url: str | Sequence[str] = "localhost:8001",
        timeout_s: float | None = None,
        keys: ClientKeys | None = None,
        retry_after_s: float = 1.0,
    ):
        self.replicas = ReplicaPool(url, replica_unavailable, retry_after_s)
        self.urls = self.replicas.urls
        self.timeout_s = timeout_s
        self.keys = keys if keys is not None else ClientKeys.resolve()
        self._headers = self.keys.grpc_headers() or None

    def _call(self, call: Callable[[grpcclient.InferenceServerClient], object], error=InputError, retry=True):
        """`call(client)` on a replica (another one when it is down and `retry`), errors as library errors."""
        try:
            return self.replicas.call(call, retry)
        except InferenceServerException as exc:
            _raise_as_library_error(exc, error)

    def _infer(
        self, model: str, inputs, output: str, error: type[InputError], parameters=None, retry: bool = True
    ) -> np.ndarray:
        result = self._call(
            lambda client: client.infer(
                model,
                inputs,
                outputs=[grpcclient.InferRequestedOutput(output)],
                client_timeout=self.timeout_s,
                headers=self._headers,
                parameters=parameters or None,
            ),
            error,
            retry,
        )
        return result.as_numpy(output)

    def is_ready(self, url: str | None = None) -> bool:
        """Whether a replica (`url`; default: any of them) and its models are ready."""
        urls = self.urls if url is None else (url,)
        return any(self._replica_ready(each) for each in urls)

    def _replica_ready(self, url: str) -> bool:
        try:
            return bool(self.replicas.call_on(url, lambda client: client.is_server_ready(headers=self._headers)))
        except InferenceServerException:
            return False

    def generate(self, request: GenerationRequest) -> np.ndarray:
        """Images `[N, H, W, 3]` uint8 for a request (validated by the server; its regions' masks travel
        as 8-bit PNG)."""
        inputs = _inputs(PIPELINE_INPUTS, vars(request)) + _regions_input(request.regions)
        return self._infer(PIPELINE_MODEL, inputs, IMAGES_OUTPUT, InputError)

    def _control(self, admin: bool = False, retry: bool = True, **values) -> dict:
        parameters = self.keys.admin_parameters() if admin else None
        result = self._infer(CONCEPTS_MODEL, _inputs(CONCEPTS_INPUTS, values), RESULT_OUTPUT, PackError, parameters, retry)
        return json.loads(result.reshape(-1)[0])

    def add_concept(self, pack: ConceptPack | bytes | str | Path, replace: bool = False) -> dict:
        """Hot-load a concept (a pack, its bytes, or a pack file); returns the server's store listing.

        Any replica takes it (they share the store). `changed` is False when the store already held
        this exact pack, so adding it again, as the fail-over to another replica does, is safe.
        """
        if isinstance(pack, ConceptPack):
            data = pack_to_bytes(pack)
        elif isinstance(pack, bytes):
            data = pack
        else:
            path = Path(pack)
            if not path.is_file():
                raise PackError("file", f"{path}: no such file")
            data = path.read_bytes()
        return self._control(admin=True, action=ACTION_ADD, pack=data, replace=replace)

    def remove_concept(self, name: str) -> dict:
        """Remove a concept (or a pack the store skipped) from the server's store; returns the store listing."""
        return self._control(admin=True, retry=False, action=ACTION_REMOVE, name=name)

    def list_concepts(self) -> list[dict]:
        """The server's concepts: name, trigger, tokens, class word, lora."""
        return self.store_listing()["concepts"]

    def store_listing(self) -> dict:
        """The server's store: `concepts`, `skipped` (packs it holds but cannot serve: name, reason), `version`."""
        return self._control(action=ACTION_LIST)

    def statistics(self, model: str, url: str | None = None) -> dict:
        """Triton's inference statistics of one model on one replica (`url`; default: the only one)."""
        try:
            stats = self.replicas.call_on(
                url, lambda client: client.get_inference_statistics(model, headers=self._headers, as_json=True)
            )
        except InferenceServerException as exc:
            _raise_as_library_error(exc, InputError)
        return stats["model_stats"][0]

    def close(self) -> None:
        self.replicas.close()

    def __enter__(self) -> ClifClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
