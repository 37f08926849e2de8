# clif-serve on NVIDIA's Triton Inference Server container (python, onnxruntime and tensorrt
# backends). Triton 2.51.0 = NGC 24.10, the version the nvidia-pytriton wheel used by the CPU
# tests carries. Build and run: docs/serving.md.
#
#   docker build -t clif-serve .                                   # embedded tiny model
#   docker build -t clif-serve --build-arg EXPORT_AT_BUILD=1 .     # ... exported at build time
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#     -v clif-concepts:/concepts -v clif-data:/data -v "$PWD/keys":/run/secrets/clif-serve:ro clif-serve
#
# The server listens on 0.0.0.0 inside the container and needs both API keys: files
# `inference-key` and `admin-key` in /run/secrets/clif-serve (a Kubernetes Secret volume), or
# CLIF_SERVE_INFERENCE_KEY_FILE / CLIF_SERVE_ADMIN_KEY_FILE pointing elsewhere. Without them it
# refuses to start, unless CLIF_SERVE_INSECURE=1 (a network you trust). Health (/v2/health/*) and
# metrics (8002) need no key.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# scripts/bootstrap.sh makes its virtualenv with `python3 -m venv`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/clif-serve
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
# The export recipes and the model repository template live inside the package (clif_serve/export/recipes,
# clif_serve/serving/model_repo); the checkout's top-level export/ and model_repo/ are links to them.
COPY clif_serve/ clif_serve/

# The README's install: scripts/bootstrap.sh = `pip install torch==2.13.0`, then
# `pip install -e .[test]`. From PyPI on x86_64 that torch is the CUDA build, which is fine:
# the stage models run on the GPU in Triton's native backends, the BLS pipeline's sampling loop
# is light CPU work.
RUN ./scripts/bootstrap.sh
# First on PATH: the clif-serve command, and the python3 whose packages the Python-backend
# stubs (clif_pipeline, clif_concepts) import.
ENV PATH=/opt/clif-serve/.venv/bin:$PATH

# What to serve: MODEL is `tiny`, `tiny-xl` or a diffusers folder (mount it, e.g. at /models/base,
# and pass -e CLIF_MODEL=/models/base); RECIPE is an export/ recipe name or file (empty: the
# model's default); BACKEND is onnxruntime, tensorrt (engines built at start, on the GPU) or python.
ARG MODEL=tiny
ARG RECIPE=
ARG BACKEND=onnxruntime
ARG EXPORT_AT_BUILD=0
ENV CLIF_MODEL=${MODEL} \
    CLIF_RECIPE=${RECIPE} \
    CLIF_BACKEND=${BACKEND} \
    CLIF_EXPORT_DIR=/data/export \
    CLIF_REPO_DIR=/data/model_repo \
    CLIF_SERVE_CONCEPT_STORE=/concepts \
    CLIF_SERVE_CACHE=/data/cache \
    CLIF_SERVE_KEY_DIR=/run/secrets/clif-serve \
    CLIF_SERVE_INSECURE=

RUN if [ "${EXPORT_AT_BUILD}" = "1" ]; then \
      clif-serve export --model "${CLIF_MODEL}" ${CLIF_RECIPE:+--recipe "${CLIF_RECIPE}"} --out "${CLIF_EXPORT_DIR}"; \
    fi

# Hot-loaded concept packs persist here (mount a volume); /data keeps the export between runs.
VOLUME ["/concepts", "/data"]
EXPOSE 8000 8001 8002

# At start: export unless /data/export holds one (TensorRT engines are built here, on the GPU),
# write the model repository, take the key files from the key folder (unless the *_KEY_FILE
# variables point elsewhere), then run tritonserver through `clif-serve serve` on 0.0.0.0
# (SIGTERM stops it). Keys never appear on clif-serve's command line.
CMD ["bash", "-c", "set -e; if [ ! -f \"$CLIF_EXPORT_DIR/manifest.json\" ]; then clif-serve export --model \"$CLIF_MODEL\" ${CLIF_RECIPE:+--recipe \"$CLIF_RECIPE\"} $([ \"$CLIF_BACKEND\" = tensorrt ] && echo --tensorrt) --out \"$CLIF_EXPORT_DIR\" --overwrite; fi; clif-serve repo --export \"$CLIF_EXPORT_DIR\" --out \"$CLIF_REPO_DIR\" --backend \"$CLIF_BACKEND\" --force; if [ -f \"$CLIF_SERVE_KEY_DIR/inference-key\" ]; then export CLIF_SERVE_INFERENCE_KEY_FILE=\"${CLIF_SERVE_INFERENCE_KEY_FILE:-$CLIF_SERVE_KEY_DIR/inference-key}\"; fi; if [ -f \"$CLIF_SERVE_KEY_DIR/admin-key\" ]; then export CLIF_SERVE_ADMIN_KEY_FILE=\"${CLIF_SERVE_ADMIN_KEY_FILE:-$CLIF_SERVE_KEY_DIR/admin-key}\"; fi; exec clif-serve serve --repo \"$CLIF_REPO_DIR\" --concept-store \"$CLIF_SERVE_CONCEPT_STORE\" --address 0.0.0.0 $([ \"$CLIF_SERVE_INSECURE\" = 1 ] && echo --insecure)"]
