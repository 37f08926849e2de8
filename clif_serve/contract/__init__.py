"""The deployment contract: what an export folder is, defined once for export, runtime and serving.

  ranges      `Range`: an inclusive {min, opt, max} integer range
  stages      stage names per model family and the tensors of each stage, with symbolic axes
  requests    request limits and defaults
  routing     which UNet stage a request goes to, with which LoRA adapter (or none)
  deployment  `Deployment`: the one value export writes into the manifest and every reader reads
  folder      `ExportFolder`: an export folder on disk (manifest, stage files, tokenizers)
  ort_settings `OrtSettings`: how an onnxruntime session of a stage runs (threads, spinning), the same
              for export's parity check, the in-process executor and the served stage models

Nothing here imports export/, runtime/ or serving/; they all import this. The exporter derives
its trace inputs and dynamic axes from `stages`, the Triton repository its stage signatures, the
TensorRT builder its optimisation profiles, and the executors their tensor names and routing.
"""
