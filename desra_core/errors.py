"""The one exception hierarchy of desra.

Every problem that a user can cause (a bad file, a wrong size, an unknown option) raises a subclass of
:class:`DesraError` with a message of the form "expected …, got … (file: …)", so that a batch job can
turn it into a report row and carry on with the rest.
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "AccessDeniedError",
    "ConfigError",
    "DesraError",
    "InputImageError",
    "LabelMapError",
    "MissingObjectError",
    "ModelLoadError",
    "ShapeError",
    "ShapeMismatchError",
    "StorageError",
]


class DesraError(Exception):
    """Base class of every error that desra raises on purpose."""


class ConfigError(DesraError, ValueError):
    """An option or configuration value is invalid."""


class InputImageError(DesraError):
    """An input image cannot be used: unreadable, corrupt, absurdly large, or of an unsupported kind.

    The offending path (when there is one) is kept on ``path`` and named in the message.
    """

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        if self.path is not None and "(file:" not in message:
            message = f"{message} (file: {self.path})"
        super().__init__(message)


class LabelMapError(InputImageError):
    """A label map has the wrong size, or values outside ADE20K's 0..149 and 255 (unlabeled)."""


class ShapeError(DesraError, ValueError):
    """An array does not have the shape or dtype that the function's contract states."""


class ShapeMismatchError(ShapeError):
    """Two arrays that must have the same size (the MSE and GAN results, say) do not."""


class ModelLoadError(DesraError):
    """A model file cannot be loaded, or is not the kind of model that was expected."""


class StorageError(DesraError):
    """A bucket or folder cannot be used: it is missing, the credentials are missing or refused, or the server
    kept failing after retries. The URL (never a credential) is kept on ``url`` and named in the message."""

    def __init__(self, message: str, url: str | None = None) -> None:
        self.url = url
        super().__init__(message)


class AccessDeniedError(StorageError):
    """The credentials are valid but may not read or write this object (that object fails alone)."""


class MissingObjectError(StorageError):
    """The object does not exist (never written, or deleted between a listing and the read)."""
