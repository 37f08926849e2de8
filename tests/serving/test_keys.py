"""API keys without a server: where they are read from, what tritonserver is told, who is refused.

The keyed server itself (restricted APIs, admin-only add/remove, open health) is tested on a real
tritonserver in test_security.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clif_serve.errors import InputError
from clif_serve.serving.keys import (
    ADMIN_KEY_ENV,
    ADMIN_KEY_PARAMETER,
    AccessDenied,
    AdminGate,
    ClientKeys,
    ServerKeys,
    is_loopback,
    request_parameters,
    require_keys_off_loopback,
)
from clif_serve.serving.launcher import Ports, TritonInstall, TritonServer

INFERENCE, ADMIN = "inference-key-0123456789", "admin-key-abcdefghijkl"


def _key_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def test_keys_come_from_files_then_the_environment(tmp_path):
    inference = _key_file(tmp_path, "inference", INFERENCE)
    admin = _key_file(tmp_path, "admin", ADMIN)
    assert ServerKeys.resolve(inference, admin, environ={}) == ServerKeys(INFERENCE, ADMIN)
    env = {"CLIF_SERVE_INFERENCE_KEY_FILE": str(inference), "CLIF_SERVE_ADMIN_KEY": ADMIN}
    assert ServerKeys.resolve(environ=env) == ServerKeys(INFERENCE, ADMIN)
    assert ServerKeys.resolve(environ={}) == ServerKeys()
    client_env = {"CLIF_SERVE_API_KEY_FILE": str(inference), "CLIF_SERVE_ADMIN_KEY_FILE": str(admin)}
    assert ClientKeys.resolve(environ=client_env) == ClientKeys(INFERENCE, ADMIN)


@pytest.mark.parametrize(
    ("text", "message"),
    [("short", "16 to 256"), ("has spaces in it, sixteen+", "16 to 256"), ("x:y=z,0123456789abcdef", "16 to 256")],
)
def test_unusable_keys_are_refused_naming_the_option(tmp_path, text, message):
    with pytest.raises(InputError, match=message) as refused:
        ServerKeys.resolve(_key_file(tmp_path, "key", text), environ={})
    assert refused.value.field == "inference_key_file"
    with pytest.raises(InputError) as missing:
        ServerKeys.resolve(admin_key_file=tmp_path / "nowhere", environ={})
    assert missing.value.field == "admin_key_file" and "no such file" in missing.value.message
    same = _key_file(tmp_path, "same", INFERENCE)
    with pytest.raises(InputError, match="must differ"):
        ServerKeys.resolve(same, same, environ={})


def test_tritonserver_is_told_to_restrict_its_apis():
    args = ServerKeys(INFERENCE, ADMIN).triton_args()
    assert f"--grpc-restricted-protocol=inference,metadata,model-config,statistics:clif-api-key={INFERENCE}" in args
    assert f"--http-restricted-api=inference,metadata,model-config,statistics:clif-api-key={INFERENCE}" in args
    management = "model-repository,shared-memory,trace,logging:clif-admin-key="
    assert f"--grpc-restricted-protocol={management}{ADMIN}" in args
    assert not any("health" in arg for arg in args), "probes need no key"
    # Without keys inference stays open and management is closed by a value nobody holds.
    open_args = ServerKeys().triton_args()
    assert len(open_args) == 2 and all(management in arg for arg in open_args)
    assert open_args != ServerKeys().triton_args()


def test_the_command_line_loads_models_at_start_only_and_keys_stay_out_of_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIF_SERVE_API_KEY", INFERENCE)
    monkeypatch.setenv("CLIF_SERVE_INFERENCE_KEY_FILE", "/somewhere")
    server = TritonServer(tmp_path, Ports.free_on_loopback(), keys=ServerKeys(INFERENCE, ADMIN))
    install = TritonInstall(Path("/bin/tritonserver"))
    command = server.command(install)
    assert "--model-control-mode=none" in command and not any(arg.startswith("--load-model") for arg in command)
    env = server.environment(install)
    assert env[ADMIN_KEY_ENV] == ADMIN, "clif_concepts checks the admin key"
    assert "CLIF_SERVE_API_KEY" not in env and "CLIF_SERVE_INFERENCE_KEY_FILE" not in env


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False), ("example.org", False)],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_no_keys_off_loopback_unless_insecure():
    with pytest.raises(InputError, match="an inference key and an admin key") as refused:
        require_keys_off_loopback("0.0.0.0", ServerKeys(), insecure=False)
    assert refused.value.field == "address" and "--insecure" in refused.value.message
    with pytest.raises(InputError, match="without an admin key"):
        require_keys_off_loopback("0.0.0.0", ServerKeys(inference=INFERENCE), insecure=False)
    require_keys_off_loopback("0.0.0.0", ServerKeys(INFERENCE, ADMIN), insecure=False)
    require_keys_off_loopback("0.0.0.0", ServerKeys(), insecure=True)
    require_keys_off_loopback("127.0.0.1", ServerKeys(), insecure=False)


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    """The CLI: a clear one-line error and exit code 2, before any server is started."""
    (tmp_path / "repo").mkdir()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "clif-serve"), "serve", "--repo", str(tmp_path / "repo"), "--address", "0.0.0.0"],
        capture_output=True, text=True, timeout=120, env={"PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 2, result.stderr
    assert "address: refusing to listen on 0.0.0.0 without an inference key and an admin key" in result.stderr


def test_the_admin_gate():
    gate = AdminGate(ADMIN)
    gate.check("list", {})
    gate.check("add", {ADMIN_KEY_PARAMETER: ADMIN})
    for parameters in ({}, {ADMIN_KEY_PARAMETER: "wrong-key-0123456789"}, {ADMIN_KEY_PARAMETER: 7}):
        with pytest.raises(AccessDenied) as denied:
            gate.check("remove", parameters)
        assert denied.value.field == ADMIN_KEY_PARAMETER
    AdminGate(None).check("add", {})  # no admin key configured: loopback as before
    assert request_parameters('{"clif_admin_key": "x"}') == {"clif_admin_key": "x"}
    assert request_parameters("not json") == {} and request_parameters("[1]") == {}


def test_client_headers_and_parameters():
    keys = ClientKeys(INFERENCE, ADMIN)
    assert keys.grpc_headers() == {
        "triton-grpc-protocol-clif-api-key": INFERENCE,
        "triton-grpc-protocol-clif-admin-key": ADMIN,
    }
    assert keys.admin_parameters() == {ADMIN_KEY_PARAMETER: ADMIN}
    assert ClientKeys().grpc_headers() == {} and ClientKeys().admin_parameters() == {}
