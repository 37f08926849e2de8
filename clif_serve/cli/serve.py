"""`clif-serve serve`: run tritonserver on a model repository until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start tritonserver on a model repository",
        description="Start tritonserver (the one on PATH, else the one inside nvidia-pytriton) on a repository "
        "made by `clif-serve repo`, wait until every model is ready, and stop it cleanly on Ctrl-C or SIGTERM.",
    )
    parser.add_argument(
        "--repo", required=True, metavar="REPO", help="model repository (clif-serve repo --out)"
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only); any other address needs both keys "
        "or --insecure",
    )
    parser.add_argument(
        "--inference-key-file",
        default=None,
        metavar="FILE",
        help="file holding the inference key (generate, list); default: $CLIF_SERVE_INFERENCE_KEY_FILE",
    )
    parser.add_argument(
        "--admin-key-file",
        default=None,
        metavar="FILE",
        help="file holding the admin key (add/remove concepts, Triton management); "
        "default: $CLIF_SERVE_ADMIN_KEY_FILE",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="listen on a non-loopback address without keys (anyone reaching the port may generate and "
        "add or remove concepts)",
    )
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)"
    )
    parser.add_argument(
        "--concept-store",
        default=None,
        metavar="DIR",
        help="concept store folder (hot-loaded packs are written here and loaded at start); "
        "default: the one in the repository's configs",
    )
    parser.add_argument(
        "--log", default=None, metavar="FILE", help="write the server log here (default: terminal)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness (300)"
    )
    parser.set_defaults(handler=run)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _access(keys, insecure: bool) -> str:
    """One line saying who may do what."""
    inference = "inference key required" if keys.inference else "no inference key: open to whoever reaches the port"
    admin = "admin key required for add/remove" if keys.admin else "no admin key: add/remove open, Triton management closed"
    return f"{inference}; {admin}" + ("; --insecure" if insecure else "")


def run(args: argparse.Namespace) -> int:
    from clif_serve.serving.keys import ServerKeys
    from clif_serve.serving.launcher import Ports, TritonServer

    keys = ServerKeys.resolve(args.inference_key_file, args.admin_key_file)
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _interrupt)
    ports = Ports(args.grpc_port, args.http_port, args.metrics_port, args.address)
    server = TritonServer(args.repo, ports, args.concept_store, log_file=args.log, keys=keys, insecure=args.insecure)
    try:
        server.start(timeout_s=args.ready_timeout)
        print(f"clif-serve: ready; gRPC {server.grpc_url}, HTTP :{ports.http}, metrics :{ports.metrics}")
        print(f"clif-serve: {_access(keys, args.insecure)}")
        print("clif-serve: Ctrl-C or SIGTERM stops the server", flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"clif-serve: tritonserver exited on its own (code {server.stop()})", flush=True)
        return 1
    except KeyboardInterrupt:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        code = server.stop()
        print(f"clif-serve: stopped (tritonserver exit code {code})", flush=True)
        return 0 if code in (0, None) else 1
