"""Sample where the `unet` stage model and a `clif_pipeline` instance spend their time while one
client generates (tiny, 20 steps), with py-spy (`pip install py-spy`; not a project dependency).

    python benchmarks/profile_stages.py --export DIR [--seconds 25]

Writes py-spy's raw (collapsed-stack) profiles to benchmarks/results/profiles/ and prints, per
process, the share of busy samples in each frame (inclusive). One pipeline instance, so the one
profiled takes every request.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from clif_serve.contract.folder import open_export
from clif_serve.runtime.request import GenerationRequest
from clif_serve.serving.client import ClifClient
from clif_serve.serving.launcher import Ports, TritonServer
from clif_serve.serving.options import RepoOptions
from clif_serve.serving.repository import build_repository

PROCESSES = {"unet_stub": "/unet/1/model.py", "clif_pipeline_stub": "/clif_pipeline/1/model.py"}


def shares(profile: Path, top: int = 12) -> list[tuple[float, str]]:
    """(percent of samples, frame) of the frames most often on the stack."""
    total, counts = 0, collections.Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(stack.split(";")):
            counts[frame] += int(count)
    return [(100 * n / total, frame) for frame, n in counts.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True)
    parser.add_argument("--seconds", type=int, default=25)
    parser.add_argument("--out", default="benchmarks/results/profiles")
    args = parser.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    request = GenerationRequest("a photo of a dog", steps=20, seed=0)
    with tempfile.TemporaryDirectory(prefix="clif-profile-") as scratch:
        work = Path(scratch)
        repo = build_repository(open_export(args.export).root, work / "repo", RepoOptions(pipeline_instances=1))
        server = TritonServer(repo, Ports.free_on_loopback(), concept_store=work / "concepts", log_file=work / "log")
        server.start(timeout_s=900)  # a busy machine takes minutes to start the stubs
        try:
            children = subprocess.run(
                ["ps", "-o", "pid=,args=", "--ppid", str(server.process.pid)], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            pids = {name: next(c.split()[0] for c in children if path in c) for name, path in PROCESSES.items()}
            with ClifClient(server.grpc_url) as client:
                for _ in range(5):
                    client.generate(request)
                samplers = [
                    subprocess.Popen(
                        [spy, "record", "-p", pid, "-d", str(args.seconds), "-r", "200", "-f", "raw", "--nonblocking",
                         "-o", str(out / f"{name}.txt")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    for name, pid in pids.items()
                ]
                end, count = time.monotonic() + args.seconds + 2, 0
                while time.monotonic() < end:
                    client.generate(request)
                    count += 1
                for sampler in samplers:
                    sampler.wait()
        finally:
            server.stop()
    print(f"{count} requests while sampling")
    for name in PROCESSES:
        print(f"== {name}")
        for percent, frame in shares(out / f"{name}.txt"):
            print(f"{percent:5.1f}%  {frame[:140]}")


if __name__ == "__main__":
    main()
