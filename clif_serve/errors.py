"""Error types shared by the library, the CLI and the server.

Every error that comes from user input names the field it is about, so the CLI can print it and
the Triton models can return it as a request error.
"""

from __future__ import annotations


class ClifServeError(Exception):
    """Base class of every error clif-serve raises on purpose."""


class InputError(ClifServeError, ValueError):
    """Bad user input. `field` names the offending request field, option or file entry."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelFolderError(ClifServeError, FileNotFoundError):
    """A model folder is missing, incomplete or not in a supported diffusers layout."""


class PackError(InputError):
    """A concept pack is malformed, incompatible with the base model, or collides with a loaded one."""
