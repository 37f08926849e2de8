"""Serving with Triton: model repository, server launcher, BLS pipeline, concept hot-load, gRPC client.

Modules (each with one job):
  protocol         names and types of the served models' tensors, shared by client and server
  signatures       the stage models' Triton tensors, derived from the deployment contract
  parameters       `ModelParameters`: the one typed value in every Python-backend model's config
  configs          Triton `config.pbtxt` files from the `model_repo/` template (ModelConfig protobuf)
  options          the options of `clif-serve repo`
  repository       `clif-serve repo`: an export folder -> a Triton model repository
  launcher         find and run `tritonserver` (PATH, else the one inside nvidia-pytriton)
  stage_runner     one ONNX stage run with onnxruntime over a dynamic batch of requests
  triton_executor  the runtime `Executor` whose stages are calls to other Triton models (BLS)
  concept_control  validated hot-load/remove in the shared concept store
  lora_adapters    onnxruntime LoRA adapters of `unet_lora`, built from the store's packs
  service          what `clif_pipeline` does with a request
  context          `ModelContext`: name, config, typed parameters and folders of a Python-backend model
  backend_utils, stage_model, pipeline_model, concepts_model
                   thin Triton Python-backend adapters (importable only inside the stub)
  client           the gRPC client used by the CLI and by applications
"""
