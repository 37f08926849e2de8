"""Concept packs: format, validation, registry, prompt expansion, store, textual-inversion interop."""
