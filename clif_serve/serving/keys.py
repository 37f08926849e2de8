"""API keys of a served deployment: where they come from, what they guard, how a client sends them.

Two keys. The inference key guards generation and `concepts list` (Triton's `inference`,
`metadata`, `model-config` and `statistics` APIs, every model included: a client reads the
published request defaults and limits from the model config, which Triton cannot change over the
API). The admin key guards concept add and remove (checked by `clif_concepts` itself: a
Python-backend model sees request parameters, not headers) and Triton's management APIs
(`model-repository`, `shared-memory`, `trace`, `logging`); without an admin key those are closed
to everybody. Health
(`/v2/health/live`, `/v2/health/ready`, gRPC ServerLive/ServerReady and grpc.health.v1) is never
restricted, so probes need no key; the metrics port is Triton's and not restricted either.

What a client sends (ClifClient and the CLI do it; a raw tritonclient or KServe HTTP user does
the same):

  gRPC header `triton-grpc-protocol-clif-api-key: <inference key>`     HTTP header `clif-api-key`
  gRPC header `triton-grpc-protocol-clif-admin-key: <admin key>`       HTTP header `clif-admin-key`
        (Triton management only)
  request parameter `clif_admin_key = <admin key>` on clif_concepts add/remove
        (gRPC `ModelInferRequest.parameters`, HTTP JSON `"parameters"`); an admin also needs the
        inference key, as every call to a model does.

Keys come from files (or environment variables), never from the command line: the server reads
`--inference-key-file` / `--admin-key-file` or `CLIF_SERVE_INFERENCE_KEY_FILE` /
`CLIF_SERVE_ADMIN_KEY_FILE` (`CLIF_SERVE_INFERENCE_KEY` / `CLIF_SERVE_ADMIN_KEY` hold values);
clients read `--api-key-file` / `--admin-key-file` or `CLIF_SERVE_API_KEY_FILE` /
`CLIF_SERVE_ADMIN_KEY_FILE` (`CLIF_SERVE_API_KEY` / `CLIF_SERVE_ADMIN_KEY`). Triton takes
restricted-API values only as command-line options, so both keys are on tritonserver's command
line (/proc/<pid>/cmdline): see docs/serving.md for what that means and how to contain it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clif_serve.errors import InputError
from clif_serve.serving.protocol import ACTION_ADD, ACTION_REMOVE

INFERENCE_KEY_FILE_ENV = "CLIF_SERVE_INFERENCE_KEY_FILE"
INFERENCE_KEY_ENV = "CLIF_SERVE_INFERENCE_KEY"
ADMIN_KEY_FILE_ENV = "CLIF_SERVE_ADMIN_KEY_FILE"
ADMIN_KEY_ENV = "CLIF_SERVE_ADMIN_KEY"
API_KEY_FILE_ENV = "CLIF_SERVE_API_KEY_FILE"
API_KEY_ENV = "CLIF_SERVE_API_KEY"
KEY_ENVS = (INFERENCE_KEY_FILE_ENV, INFERENCE_KEY_ENV, ADMIN_KEY_FILE_ENV, ADMIN_KEY_ENV, API_KEY_FILE_ENV, API_KEY_ENV)

INFERENCE_HEADER = "clif-api-key"
ADMIN_HEADER = "clif-admin-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton prefixes restricted-protocol headers on gRPC
ADMIN_KEY_PARAMETER = "clif_admin_key"
ADMIN_ACTIONS = (ACTION_ADD, ACTION_REMOVE)

# Triton API groups (--grpc-restricted-protocol / --http-restricted-api categories); `health` stays open.
INFERENCE_APIS = ("inference", "metadata", "model-config", "statistics")
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")

# Printable, no separators Triton's option parser or an HTTP header could trip on.
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")


class AccessDenied(InputError):
    """A call without the key it needs (or with a wrong one); `field` names where the key goes."""


def read_key_file(path: str | Path, field: str) -> str:
    """A key from a file (surrounding white space stripped); InputError naming `field` when unusable."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise InputError(field, f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(field, f"{file}: cannot be read as a key ({exc})") from None
    return check_key(text, field, source=str(file))


def check_key(key: str, field: str, source: str = "the key") -> str:
    """A key as Triton and HTTP headers can carry it: 16-256 characters of [A-Za-z0-9._~+/-]."""
    if not KEY_PATTERN.fullmatch(key):
        raise InputError(
            field,
            f"{source} must hold 16 to 256 characters of [A-Za-z0-9._~+/-] "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
        )
    return key


def _resolve(file: str | Path | None, file_env: str, value_env: str, field: str, environ: Mapping[str, str]):
    if file:
        return read_key_file(file, field)
    if environ.get(file_env):
        return read_key_file(environ[file_env], file_env)
    if environ.get(value_env):
        return check_key(environ[value_env], value_env, source=f"${value_env}")
    return None


@dataclass(frozen=True)
class ServerKeys:
    """The keys a server is started with (None: not configured)."""

    inference: str | None = None
    admin: str | None = None

    @classmethod
    def resolve(
        cls,
        inference_key_file: str | Path | None = None,
        admin_key_file: str | Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ServerKeys:
        """Keys from the given files, else from the environment (`*_KEY_FILE` paths, then `*_KEY` values)."""
        keys = cls(
            _resolve(inference_key_file, INFERENCE_KEY_FILE_ENV, INFERENCE_KEY_ENV, "inference_key_file", environ),
            _resolve(admin_key_file, ADMIN_KEY_FILE_ENV, ADMIN_KEY_ENV, "admin_key_file", environ),
        )
        if keys.inference is not None and keys.inference == keys.admin:
            raise InputError("admin_key_file", "the admin key must differ from the inference key")
        return keys

    def triton_args(self) -> list[str]:
        """tritonserver options restricting its APIs: the inference group to the inference key (when set),
        the management group to the admin key, or to a random value nobody holds when there is none."""
        args = []
        groups = [(INFERENCE_APIS, INFERENCE_HEADER, self.inference), (ADMIN_APIS, ADMIN_HEADER, self.admin)]
        for apis, header, key in groups:
            if key is None and apis is INFERENCE_APIS:
                continue
            value = key or secrets.token_urlsafe(32)
            restriction = f"{','.join(apis)}:{header}={value}"
            args += [f"--grpc-restricted-protocol={restriction}", f"--http-restricted-api={restriction}"]
        return args

    def model_environment(self) -> dict[str, str]:
        """What the Python-backend models get: the admin key, which `clif_concepts` checks."""
        return {ADMIN_KEY_ENV: self.admin} if self.admin is not None else {}


def admin_key_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    """The admin key `clif_concepts` checks: the one the launcher (or a deployment) put in its environment."""
    return _resolve(None, ADMIN_KEY_FILE_ENV, ADMIN_KEY_ENV, "admin_key", environ)


def is_loopback(address: str) -> bool:
    """Whether a listen address is on loopback only (`localhost`, 127.0.0.0/8, ::1)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def require_keys_off_loopback(address: str, keys: ServerKeys, insecure: bool) -> None:
    """Refuse (InputError naming `address`) to listen beyond loopback without both keys, unless `insecure`."""
    if insecure or is_loopback(address):
        return
    missing = [name for name, key in (("an inference key", keys.inference), ("an admin key", keys.admin)) if key is None]
    if missing:
        raise InputError(
            "address",
            f"refusing to listen on {address} without {' and '.join(missing)}: anyone reaching the port could "
            "generate and add or remove concepts. Give --inference-key-file and --admin-key-file (or "
            f"{INFERENCE_KEY_FILE_ENV} / {ADMIN_KEY_FILE_ENV}), listen on 127.0.0.1, or pass --insecure",
        )


class AdminGate:
    """The admin-key check of `clif_concepts`: add and remove need the key as request parameter `clif_admin_key`."""

    def __init__(self, key: str | None):
        self._key = key.encode() if key is not None else None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def check(self, action: str, parameters: Mapping[str, object]) -> None:
        """Raise AccessDenied unless the action needs no key or the parameters carry the admin key."""
        if self._key is None or action not in ADMIN_ACTIONS:
            return
        given = parameters.get(ADMIN_KEY_PARAMETER)
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self._key):
            raise AccessDenied(
                ADMIN_KEY_PARAMETER,
                f"action {action!r} needs this server's admin key as request parameter {ADMIN_KEY_PARAMETER} "
                f"(clif-serve: --admin-key-file or {ADMIN_KEY_FILE_ENV})",
            )


def request_parameters(text: str) -> dict[str, object]:
    """A Python-backend request's parameters (`request.parameters()` returns JSON text)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ClientKeys:
    """The keys a client sends (None: none)."""

    api: str | None = None
    admin: str | None = None

    @classmethod
    def resolve(
        cls,
        api_key_file: str | Path | None = None,
        admin_key_file: str | Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ClientKeys:
        """Keys from the given files, else from the environment (`*_KEY_FILE` paths, then `*_KEY` values)."""
        return cls(
            _resolve(api_key_file, API_KEY_FILE_ENV, API_KEY_ENV, "api_key_file", environ),
            _resolve(admin_key_file, ADMIN_KEY_FILE_ENV, ADMIN_KEY_ENV, "admin_key_file", environ),
        )

    def grpc_headers(self) -> dict[str, str]:
        """gRPC headers of every call: the inference key, and the admin key for Triton's management APIs."""
        headers = {}
        if self.api is not None:
            headers[GRPC_HEADER_PREFIX + INFERENCE_HEADER] = self.api
        if self.admin is not None:
            headers[GRPC_HEADER_PREFIX + ADMIN_HEADER] = self.admin
        return headers

    def admin_parameters(self) -> dict[str, str]:
        """Request parameters of concept add/remove: the admin key."""
        return {ADMIN_KEY_PARAMETER: self.admin} if self.admin is not None else {}
