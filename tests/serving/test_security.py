"""A server started with both keys (a real tritonserver on loopback): who may do what, and kill -9.

* Triton's management is closed: models load at start only (`--model-control-mode=none`), so
  `load_model` with files (code execution as the server's user) and `unload_model` are refused to
  everybody, admin included; shared memory, logging, trace and model configs need the admin key.
* generate and list need the inference key; add and remove the admin key as well (checked by
  `clif_concepts` from the request parameter), over gRPC and over KServe HTTP alike.
* health (Kubernetes probes) and the metrics port need no key.
* kill -9 of the whole server during hot-loads: the next server on the same store removes the dead
  one's shared-memory regions at start, the store holds only whole packs, and the client's retry
  of its unanswered add is safe.

The unkeyed loopback server of the other tests (conftest `served`) shows that without keys
everything works as before.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clif_serve.concepts.pack import pack_to_bytes, read_pack
from clif_serve.concepts.store import ConceptStore
from clif_serve.errors import PackError
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.keys import ADMIN_KEY_PARAMETER, AccessDenied, ClientKeys, ServerKeys
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.parameters import ModelParameters
from clif_serve.serving.repository import build_repository
from clif_serve.serving.shm import SHM_DIR
from tests.helpers import random_pack
from tests.serving.conftest import MAX_PACK_BYTES

INFERENCE, ADMIN = "test-inference-key-4f1b9c2e", "test-admin-key-8d7e6a5b4c3d"
API = {"triton-grpc-protocol-clif-api-key": INFERENCE}
ADMIN_HEADERS = API | {"triton-grpc-protocol-clif-admin-key": ADMIN}


@dataclass
class Keyed:
    server: TritonServer
    root: Path
    repo: Path
    store: Path


def _start(repo: Path, store: Path, log: Path) -> TritonServer:
    server = TritonServer(repo, Ports.free_on_loopback(), concept_store=store, log_file=log, keys=ServerKeys(INFERENCE, ADMIN))
    return server.start(timeout_s=300)


@pytest.fixture(scope="module")
def keyed(tiny_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed")
    options = RepoOptions(pipeline_instances=1, models=ModelParameters(max_pack_bytes=MAX_PACK_BYTES))
    repo = build_repository(tiny_export.root, root / "repo", options)
    server = _start(repo, root / "store", root / "server.log")
    served = Keyed(server, root, repo, root / "store")
    yield served
    served.server.stop()


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call(*args, **kwargs)
    return refused.value.message()


def test_management_is_closed_to_everybody_but_probes_are_open(keyed, tmp_path):
    marker = tmp_path / "ran"
    evil = f"open({str(marker)!r}, 'w').write('code ran')\nclass TritonPythonModel:\n    pass\n".encode()
    config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0})
    with grpcclient.InferenceServerClient(keyed.server.grpc_url) as raw:
        for headers in (None, API, ADMIN_HEADERS):
            message = _refused(raw.load_model, "evil", headers=headers, config=config, files={"file:1/model.py": evil})
            assert "restricted" in message or "not allowed" in message, message
            message = _refused(raw.unload_model, "clif_pipeline", headers=headers)
            assert "restricted" in message or "not allowed" in message, message
        for call, args in (
            (raw.register_system_shared_memory, ("region", "/triton_python_backend_shm_region_x", 1024)),
            (raw.update_log_settings, ({"log_verbose_level": 1},)),
            (raw.update_trace_settings, (None, {"trace_level": ["TIMESTAMPS"]})),
        ):
            for headers in (None, API):
                assert "expecting header 'triton-grpc-protocol-clif-admin-key'" in _refused(call, *args, headers=headers)
        # Configs are read-only over the API and publish the request defaults and limits: the inference key reads them.
        assert "expecting header 'triton-grpc-protocol-clif-api-key'" in _refused(raw.get_model_config, "clif_pipeline")
        assert raw.get_model_config("clif_pipeline", headers=API).config.name == "clif_pipeline"
        assert raw.is_server_ready() and raw.is_server_live()  # gRPC health: no key
        assert raw.is_model_ready("clif_pipeline", headers=API)
    assert not marker.exists(), "no client-supplied code ran"
    http, metrics = keyed.server.ports.http, keyed.server.ports.metrics
    for path in ("/v2/health/live", "/v2/health/ready"):
        with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=30) as reply:
            assert reply.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30) as reply:
        assert b"nv_inference_request_success" in reply.read()
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/clif_pipeline", timeout=30)
    assert forbidden.value.code == 403


def test_the_keys_decide_who_may_generate_and_who_may_change_concepts(keyed, tiny_base):
    url = keyed.server.grpc_url
    pack = random_pack(tiny_base, "secured", seed=5)
    request = GenerationRequest("a photo of <secured>", steps=2, seed=1)
    with ClifClient(url, keys=ClientKeys()) as anonymous, ClifClient(url, keys=ClientKeys("wrong-key-0123456789ab")) as wrong:
        for client in (anonymous, wrong):
            with pytest.raises(AccessDenied) as denied:
                client.generate(request)
            assert denied.value.field == "triton-grpc-protocol-clif-api-key"
    with ClifClient(url, keys=ClientKeys(INFERENCE)) as user, ClifClient(url, keys=ClientKeys(INFERENCE, ADMIN)) as admin:
        for change in (lambda: user.add_concept(pack), lambda: user.remove_concept("secured")):
            with pytest.raises(AccessDenied) as denied:
                change()
            assert denied.value.field == ADMIN_KEY_PARAMETER
        assert user.list_concepts() == []
        assert admin.add_concept(pack)["changed"]
        assert user.generate(request).shape == (1, 64, 64, 3)
        with ClifClient(url, keys=ClientKeys(INFERENCE, "not-the-admin-key-0123")) as impostor:
            with pytest.raises(AccessDenied):
                impostor.remove_concept("secured")
        admin.remove_concept("secured")
        with pytest.raises(PackError) as refused:  # keys do not bypass validation
            admin.add_concept(pack_to_bytes(pack)[:-5])
        assert refused.value.field == "file"


def test_a_raw_kserve_http_client_uses_the_header_and_the_parameter(keyed, tiny_base):
    """What docs/serving.md tells raw clients: header `clif-api-key`, request parameter `clif_admin_key`."""
    pack = random_pack(tiny_base, "via_http", seed=6)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{keyed.server.ports.http}")
    inputs = []
    for name, value in (("action", b"add"), ("pack", pack_to_bytes(pack))):
        tensor = httpclient.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value], dtype=np.object_))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException, match="needs this server's admin key"):
        http.infer("clif_concepts", inputs, headers={"clif-api-key": INFERENCE})
    result = http.infer("clif_concepts", inputs, headers={"clif-api-key": INFERENCE}, parameters={ADMIN_KEY_PARAMETER: ADMIN})
    listing = json.loads(result.as_numpy("result")[0])
    assert listing["changed"] and [c["name"] for c in listing["concepts"]] == ["via_http"]
    with ClifClient(keyed.server.grpc_url, keys=ClientKeys(INFERENCE, ADMIN)) as admin:
        admin.remove_concept("via_http")


def _regions(prefix: str) -> list[str]:
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))


def _wait_until_gone(group: int, timeout_s: float = 60) -> None:
    """Wait until no live (non-zombie) process of a process group is left: SIGKILLed stubs take a moment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for entry in Path("/proc").iterdir():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == group:
                alive.append(entry.name)
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of group {group} still alive: {alive}")


def test_kill_9_during_hot_loads_then_restart(keyed, tiny_base):
    """SIGKILL to tritonserver and its stubs while an admin hot-loads: the next server removes the dead
    one's shared-memory regions, serves exactly the whole packs of the store, and a retry is safe."""
    if not SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    server = keyed.server
    prefix = server.regions.prefix
    assert _regions(prefix), "the python backend names its regions with this server's prefix"
    packs = [random_pack(tiny_base, f"crash{i}", seed=60 + i) for i in range(30)]
    sent, answered, stop = [], [], threading.Event()

    def hot_loads() -> None:
        with ClifClient(server.grpc_url, keys=ClientKeys(INFERENCE, ADMIN), timeout_s=30) as admin:
            for pack in packs:
                if stop.is_set():
                    return
                sent.append(pack)
                try:
                    admin.add_concept(pack)
                    answered.append(pack.name)
                except Exception:  # the server died under this add: its outcome is unknown to the client
                    return

    loader = threading.Thread(target=hot_loads)
    loader.start()
    deadline = time.monotonic() + 120
    while len(answered) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(server.process.pid, signal.SIGKILL)  # tritonserver and every stub of its session
    server.process.wait(timeout=60)
    _wait_until_gone(server.process.pid)
    stop.set()
    loader.join(timeout=60)
    assert len(answered) >= 3 and _regions(prefix), "the killed server left its regions behind"

    restarted = _start(keyed.repo, keyed.store, keyed.root / "restarted.log")
    try:
        keyed.server = restarted
        assert _regions(prefix) == [], "removed when the next server started"
        store = ConceptStore(keyed.store)
        names = sorted(path.name for path in keyed.store.iterdir())
        assert all(not name.startswith(".") or name in (".version", ".lock") for name in names), names
        assert store.version().isdigit()
        on_disk = {path.stem for path in keyed.store.glob("*.safetensors")}
        for path in keyed.store.glob("*.safetensors"):
            read_pack(path)  # whole packs only
        with ClifClient(restarted.grpc_url, keys=ClientKeys(INFERENCE, ADMIN)) as admin:
            listing = admin.store_listing()
            assert {c["name"] for c in listing["concepts"]} == on_disk and listing["skipped"] == []
            assert set(answered) <= on_disk
            retry = admin.add_concept(sent[-1])  # the add the client got no answer for
            assert retry["changed"] is (sent[-1].name not in on_disk)
            assert admin.generate(GenerationRequest(f"a photo of <{sent[-1].name}>", steps=2)).shape == (1, 64, 64, 3)
    finally:
        server.stop()  # the killed one: nothing left to stop
