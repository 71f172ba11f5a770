"""Typed errors for bad input. Each message names the culprit; the CLI prints it on one line.

They derive from the project's error root (`facap_io.FacapError`), so every command line prints any of them
the same way and a caller can still catch one kind precisely.
"""

from facap_io.errors import FacapError
from facap_io.errors import UnsafePathError as _UnsafePath


class DataError(FacapError):
    """Bad or inconsistent input data (annotation files, images, dataset folders)."""


class MissingImageError(DataError):
    """One or more images that the annotations reference are absent."""


class UnsafePathError(DataError, _UnsafePath):
    """An image path from an annotation file leaves its image root (or holds a NUL byte)."""


class SchemaError(DataError):
    """A file or dataset does not have the structure its format requires."""
