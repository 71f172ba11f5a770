"""Safe image access: paths confined to their image root, and decoding that always yields RGB or fails loudly."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facap_io.errors import UnsafePathError as FacapUnsafePathError
from facap_io.paths import inside

from .errors import DataError, UnsafePathError

# Pillow warns above MAX_IMAGE_PIXELS and raises only above twice that; a catalogue image beyond the
# warning limit (~89 megapixels) is refused outright rather than decoded into gigabytes of memory.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
_WHITE = (255, 255, 255)


def safe_image_path(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """Join an annotation-file path onto its image root, refusing anything that resolves outside the root.

    Absolute paths, `..` segments that climb out, symbolic links pointing elsewhere and paths holding a NUL
    byte (which no file system accepts) are all refused.
    """
    relative = os.fspath(relative)
    if "\x00" in relative:
        raise UnsafePathError(f"image path {relative!r} holds a NUL byte")
    if not relative or os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise UnsafePathError(f"image path {relative!r} must be relative to the image root {os.fspath(root)!r}")
    try:
        return inside(root, relative, what="image path")
    except FacapUnsafePathError:
        raise UnsafePathError(f"image path {relative!r} escapes the image root {os.fspath(root)!r}") from None


def load_rgb(source: str | os.PathLike | bytes, *, name: str | None = None) -> Image.Image:
    """Decode an image fully and return it in RGB.

    CMYK, grayscale, palette, alpha (composited on white, as product photos are shown) and 16-bit images are
    converted; truncated or corrupt files and decompression bombs raise `DataError` naming the file.
    """
    label = name or (os.fspath(source) if not isinstance(source, bytes) else "<bytes>")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"image {label} has {image.width}x{image.height} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS} (possible decompression bomb)"
                    )
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except DataError:
        raise
    except FileNotFoundError as error:
        raise DataError(f"image {label} does not exist") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"image {label} refused as a possible decompression bomb: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"image {label} cannot be decoded ({type(error).__name__}: {error})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: rescale to 8 bits instead of letting convert() clip at 255.
        values = np.asarray(image, dtype=np.uint32)
        return Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, _WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """Encode an RGB image as JPEG bytes (the format images are embedded in built datasets)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
