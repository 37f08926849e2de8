"""Limits of the concept pack format (no heavy imports: the CLI and the serving options read them).

Every limit bounds work that happens before a pack is accepted (the header is parsed before any
tensor is read) or a reply that grows with the store (`concepts list`).
"""

from __future__ import annotations

DEFAULT_MAX_PACK_BYTES = 256 * 1024 * 1024
# The safetensors header (JSON): a full-size SDXL LoRA pack's header is about 200 KB (1,120 LoRA tensors).
MAX_HEADER_BYTES = 1024 * 1024
# Manifest (safetensors metadata): entries, key length, and bytes per value.
MAX_MANIFEST_ENTRIES = 32
MAX_MANIFEST_KEY_CHARS = 64
MAX_MANIFEST_VALUE_BYTES = 8 * 1024
# Concept tokens: at most what a CLIP prompt holds (77 positions less start and end), each a short string.
MAX_TOKENS = 75
MAX_TOKEN_CHARS = 80
MAX_CLASS_WORD_CHARS = 64
MAX_FINGERPRINT_CHARS = 64
# Concepts a served store holds (`clif-serve repo --max-concepts`).
DEFAULT_MAX_CONCEPTS = 1024
