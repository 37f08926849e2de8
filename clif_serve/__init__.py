"""clif-serve: non-confusing multi-concept image generation (CLIF) served at low latency with Triton."""

__version__ = "0.1.0"
