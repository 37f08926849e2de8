"""Serving with Triton: model repository, server launcher, BLS pipeline, concept hot-load, gRPC client.

Modules (each with one job):
  protocol         names and types of the served models' tensors, shared by client and server
  signatures       per-sample tensor signatures of the stage models (fixed concept-table rows)
  configs          Triton `config.pbtxt` files from the `model_repo/` template (ModelConfig protobuf)
  options          the options of `clif-serve repo`
  repository       `clif-serve repo`: an export folder -> a Triton model repository
  launcher         find and run `tritonserver` (PATH, else the one inside nvidia-pytriton)
  stage            one ONNX stage run with onnxruntime over a dynamic batch of requests
  triton_executor  the runtime `Executor` whose stages are calls to other Triton models (BLS)
  concept_sync     the shared concept store: validated hot-load/remove, per-request sync
  lora_adapters    onnxruntime LoRA adapters of `unet_lora`, built from the store's packs
  service          what `clif_pipeline` does with a request
  backend_utils, stage_model, pipeline_model, concepts_model
                   thin Triton Python-backend adapters (importable only inside the stub)
  client           the gRPC client used by the CLI and by applications
  demo             the served flow end to end with a latency summary (`python -m clif_serve.serving.demo`)
"""
