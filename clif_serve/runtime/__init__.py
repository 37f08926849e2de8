"""The backend-agnostic sampling loop, its executors and the in-process pipeline."""
