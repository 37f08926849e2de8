"""Find and run `tritonserver`: the one on PATH (NGC container), else the one in nvidia-pytriton.

The nvidia-pytriton wheel carries a real tritonserver (2.51, Python backend only). It runs the
way pytriton itself runs it (see ../shared ENVIRONMENT.md): the `tritonserver/` folder is copied
somewhere writable, the Python-backend stub for the running Python goes to `backends/python/`,
`LD_LIBRARY_PATH` starts with this Python's own library folder (else the stub loads another
libpython) followed by the wheel's `nvidia_pytriton.libs`, and this environment's `bin/` comes
first on PATH, so the stub's `python3` is this interpreter with clif_serve importable.

The server is closed by default: it listens on 127.0.0.1 unless told otherwise and refuses a
non-loopback address without both API keys (`keys.require_keys_off_loopback`; `insecure`
overrides); models are loaded at start and never through the API (`--model-control-mode=none`:
nobody can load code or unload a model over the network); Triton's APIs are restricted to the
keys (`keys.ServerKeys.triton_args`, management closed to everybody without an admin key); and the
python backend's shared-memory regions carry a per-server prefix, so the regions of a server
killed with -9 are removed when the next one starts (`clif_serve.serving.shm`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from clif_serve.errors import ClifServeError
from clif_serve.serving.concept_control import STORE_ENV
from clif_serve.serving.keys import KEY_ENVS, ServerKeys, require_keys_off_loopback
from clif_serve.serving.shm import RegionClaim, claim_regions, remove_stale_regions

PYTRITON_LIBS = "nvidia_pytriton.libs"
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
EXIT_TIMEOUT_S = 90  # seconds tritonserver may take to stop cleanly (--exit-timeout-secs)


class ServerNotFoundError(ClifServeError):
    """No tritonserver binary could be found."""


class ServerStartError(ClifServeError):
    """tritonserver exited or did not become ready."""


@dataclass(frozen=True)
class TritonInstall:
    """A runnable tritonserver: binary, backend/cache folders (None: its defaults) and extra env."""

    binary: Path
    backend_dir: Path | None = None
    cache_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None  # a prepared copy to delete when the server stops


def python_env() -> dict[str, str]:
    """Environment that makes Python-backend stubs run this interpreter (this venv's bin/ first on PATH)."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def pytriton_dist() -> Path | None:
    """The `tritonserver/` folder inside the installed nvidia-pytriton wheel, if any."""
    found = importlib.util.find_spec("pytriton")
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations))) / "tritonserver"
    return folder if (folder / "bin" / "tritonserver").is_file() else None


def prepare_pytriton(dist: Path) -> TritonInstall:
    """A writable copy of the wheel's tritonserver with the stub for this Python, and its environment."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerNotFoundError(f"nvidia-pytriton has no Python-backend stub for Python {version} ({stub})")
    workdir = Path(tempfile.mkdtemp(prefix="clif-serve-triton-"))
    copy = workdir / "tritonserver"
    shutil.copytree(dist, copy, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy2(stub, copy / "backends" / "python" / stub.name)
    libs = [
        sysconfig.get_config_var("LIBDIR"),
        str(dist.parent.parent / PYTRITON_LIBS),
        os.environ.get("LD_LIBRARY_PATH"),
    ]
    env = python_env() | {"LD_LIBRARY_PATH": os.pathsep.join(part for part in libs if part)}
    return TritonInstall(copy / "bin" / "tritonserver", copy / "backends", copy / "caches", env, workdir)


def find_tritonserver(search_path: str | None = None, use_pytriton: bool = True) -> TritonInstall:
    """`tritonserver` on `search_path` (default PATH), else nvidia-pytriton's; a clear error when neither."""
    on_path = shutil.which("tritonserver", path=search_path)
    if on_path:
        return TritonInstall(Path(on_path), env=python_env())
    dist = pytriton_dist() if use_pytriton else None
    if dist is None:
        raise ServerNotFoundError(
            "no tritonserver found: there is none on PATH and nvidia-pytriton is not installed; "
            "use NVIDIA's tritonserver container, or `pip install nvidia-pytriton` (clif-serve[server])"
        )
    return prepare_pytriton(dist)


def _stop_with_parent() -> None:
    """In the child before exec: have Linux send SIGTERM to tritonserver if this process dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Ports:
    """The server's gRPC, HTTP and metrics ports and the address they bind to (loopback by default)."""

    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002
    address: str = "127.0.0.1"

    @staticmethod
    def free_on_loopback() -> Ports:
        """Three ports free right now, bound to 127.0.0.1 only."""
        return Ports(free_port(), free_port(), free_port(), "127.0.0.1")


class TritonServer:
    """A tritonserver process serving one model repository (all models loaded at start)."""

    def __init__(
        self,
        repo: str | Path,
        ports: Ports = Ports(),
        concept_store: str | Path | None = None,
        install: TritonInstall | None = None,
        log_file: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        keys: ServerKeys = ServerKeys(),
        insecure: bool = False,
    ):
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ServerStartError(
                f"{self.repo}: no such model repository (build one with `clif-serve repo`)"
            )
        self.ports = ports
        self.concept_store = Path(concept_store).resolve() if concept_store else None
        self.install = install
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = tuple(extra_args)
        self.keys = keys
        self.insecure = insecure
        self.process: subprocess.Popen | None = None
        self.regions: RegionClaim | None = None  # this server's shared-memory prefix, while it runs
        self._output = None
        self._prepared: TritonInstall | None = None  # found by start(), cleaned up by stop()

    @property
    def grpc_url(self) -> str:
        host = "localhost" if self.ports.address == "0.0.0.0" else self.ports.address
        return f"{host}:{self.ports.grpc}"

    def command(self, install: TritonInstall, regions: RegionClaim | None = None) -> list[str]:
        """The tritonserver command line (API restrictions included: it holds the keys)."""
        args = [
            str(install.binary),
            f"--model-repository={self.repo}",
            "--model-control-mode=none",
            "--disable-auto-complete-config",
            f"--grpc-address={self.ports.address}",
            f"--http-address={self.ports.address}",
            f"--metrics-address={self.ports.address}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-port={self.ports.http}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            # Time to finish in-flight requests and unload the stubs on SIGINT/SIGTERM (Triton's default,
            # 30 s, is too short for a loaded machine: it then exits 1); `stop` waits longer than this.
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]
        if install.backend_dir is not None:
            args.append(f"--backend-directory={install.backend_dir}")
        if install.cache_dir is not None:
            args.append(f"--cache-directory={install.cache_dir}")
        if regions is not None:
            args.append(regions.backend_option())
        return args + self.keys.triton_args() + list(self.extra_args)

    def environment(self, install: TritonInstall) -> dict[str, str]:
        """The server's environment: the install's, the concept store, the admin key for `clif_concepts`
        (key variables of the caller are not passed on), quiet transformers."""
        inherited = {name: value for name, value in os.environ.items() if name not in KEY_ENVS}
        env = inherited | install.env | self.keys.model_environment() | {"TRANSFORMERS_VERBOSITY": "error"}
        if self.concept_store is not None:
            env[STORE_ENV] = str(self.concept_store)
        return env

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        """Start the server and wait until it and every model is ready.

        The server gets SIGTERM if the thread that started it ends (Linux parent-death signal), so
        no tritonserver outlives a crashed caller: start it from a thread that lives as long.
        """
        if self.process is not None:
            raise ServerStartError("this server is already running")
        require_keys_off_loopback(self.ports.address, self.keys, self.insecure)
        install = self.install
        if install is None:
            install = self._prepared = find_tritonserver()
        self._output = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 (closed in stop)
        try:
            remove_stale_regions()
            self.regions = claim_regions()
            # Own session: a terminal's Ctrl-C reaches us only, and we stop the server exactly once.
            self.process = subprocess.Popen(
                self.command(install, self.regions),
                env=self.environment(install),
                stdout=self._output,
                stderr=subprocess.STDOUT if self._output else None,
                start_new_session=True,
                preexec_fn=_stop_with_parent,
                pass_fds=(self.regions.fd,) if self.regions else (),
            )
            if self.regions is not None:
                self.regions.close()  # the server holds the owner lock now, for as long as it lives
            self.wait_ready(timeout_s)
            remove_stale_regions()  # those of servers whose processes were still exiting a moment ago
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll readiness over gRPC; raise ServerStartError if the process exits or time runs out."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout_s
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerStartError(
                        f"tritonserver exited with code {self.process.returncode}{self._log_hint()}"
                    )
                try:
                    if client.is_server_ready():
                        return
                except InferenceServerException:
                    pass
                time.sleep(0.2)
        raise ServerStartError(f"tritonserver was not ready after {timeout_s:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        """The server log's error lines (Triton prefixes them with E), for a failure message."""
        if self.log_file is None or not self.log_file.is_file():
            return ""
        lines = self.log_file.read_text(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("E") or line.startswith("error")] or lines[-10:]
        return f"; errors in {self.log_file}:\n" + "\n".join(errors[-10:])

    def stop(self, timeout_s: float = EXIT_TIMEOUT_S + 30.0) -> int | None:
        """Ask the server to stop (SIGINT: it finishes in-flight requests), kill it after `timeout_s`."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            code = process.returncode
        if self.regions is not None:
            self.regions.close()
            remove_stale_regions(self.regions.folder, self.regions.token)
            self.regions = None
        if self._output is not None:
            self._output.close()
            self._output = None
        if self._prepared is not None and self._prepared.workdir is not None:
            shutil.rmtree(self._prepared.workdir, ignore_errors=True)
        self._prepared = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
