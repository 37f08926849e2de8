"""Export of the text encoder(s), UNet and VAE decoder to ONNX (and TensorRT engines)."""
