import io

import numpy as np
import pytest
from PIL import Image

from facap_dataset import images
from facap_dataset.errors import DataError, UnsafePathError


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "P", "RGBA", "I;16"])
def test_every_mode_becomes_rgb(mode):
    source = Image.new("RGB", (8, 6), (200, 40, 10))
    image = source.convert(mode) if mode != "I;16" else Image.fromarray(np.full((6, 8), 51400, np.uint16))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    decoded = images.load_rgb(buffer.getvalue())
    assert decoded.mode == "RGB" and decoded.size == (8, 6)
    if mode == "I;16":  # 16-bit grey is rescaled, not clipped to white
        assert decoded.getpixel((0, 0)) == (200, 200, 200)


def test_transparent_pixels_are_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert images.load_rgb(_png_bytes(image)).getpixel((1, 1)) == (255, 255, 255)


def test_truncated_jpeg_is_refused_with_its_name(tmp_path):
    path = tmp_path / "B00TRUNC.jpg"
    full = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(full, format="JPEG")
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(DataError, match="B00TRUNC.jpg cannot be decoded"):
        images.load_rgb(path)


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="decompression bomb"):
        images.load_rgb(_png_bytes(Image.new("RGB", (20, 20))), name="bomb.png")


def test_paths_stay_inside_the_image_root(tmp_path):
    root = tmp_path / "images"
    (root / "dresses").mkdir(parents=True)
    assert images.safe_image_path(root, "dresses/a.jpg") == (root / "dresses" / "a.jpg").resolve()
    for bad in ["../secret.jpg", "dresses/../../secret.jpg", "/etc/passwd", ""]:
        with pytest.raises(UnsafePathError):
            images.safe_image_path(root, bad)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="escapes the image root"):
        images.safe_image_path(root, "link/secret.jpg")
