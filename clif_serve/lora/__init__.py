"""LoRA in one home: the weights packs carry, their math, onnxruntime adapters, peft adapters, refits.

  weights     `LoraWeights` (peft key naming, validation, content id) and the `unet_lora` input names
  math        the update `alpha / rank * B @ A`, merging it into a UNet or into one weight array
  cache       a bounded least-recently-used cache whose entries requests pin while they use them
  onnx        onnxruntime adapter files and loaded adapters for the `unet_lora` stage
  peft        peft adapters on a PyTorch UNet (the PyTorch executor, the `unet_lora` trace)
  refit       which weights a TensorRT engine must rewrite to switch LoRA sets
  formats     LoRA files of diffusers, peft and kohya in, the diffusers LoRA file out
"""
