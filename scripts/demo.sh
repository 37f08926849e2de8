#!/usr/bin/env bash
# The main job on the embedded default: sets up .venv if needed, then runs the served flow on the
# tiny model (export -> Triton model repository -> local tritonserver -> multi-concept gRPC request
# -> hot-load a concept and use it -> latency summary -> stop). Outputs go to demo-output/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
cd "$root"
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
exec "$root/.venv/bin/python" -m clif_serve.demo --workdir demo-output --json demo-output/figures.json "$@"
