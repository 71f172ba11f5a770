"""Typed errors for bad input. Each message names the culprit; the CLI prints it on one line."""


class DataError(ValueError):
    """Bad or inconsistent input data (annotation files, images, dataset folders)."""


class MissingImageError(DataError):
    """One or more images that the annotations reference are absent."""


class UnsafePathError(DataError):
    """An image path from an annotation file leaves its image root."""


class SchemaError(DataError):
    """A file or dataset does not have the structure its format requires."""
