"""decode_image: modes, EXIF orientation, broken files, bombs, DCT downscale."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlcoattn.data.image import (
    ImageDecodeError,
    decode_image,
    decode_image_and_size,
    encode_image,
    image_format,
    image_size,
)


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _halves(w: int = 40, h: int = 20) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def test_rgb_jpeg_and_png_roundtrip():
    img = _halves()
    for fmt in ("PNG", "JPEG"):
        out = decode_image(_save(img, fmt))
        assert out.mode == "RGB" and out.size == (40, 20)
        diff = np.abs(np.asarray(out, int) - np.asarray(img, int))
        assert diff.max() == 0 if fmt == "PNG" else diff[:, :12].max() < 20 and diff[:, 28:].max() < 20


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored image rotated 90 degrees clockwise
    data = _save(_halves(), "JPEG", exif=exif.tobytes(), quality=95)
    out = np.asarray(decode_image(data))
    assert out.shape == (40, 20, 3)  # width and height swapped
    assert out[:15, :, 0].mean() > 200 and out[:15, :, 2].mean() < 60  # stored left (red) is now on top
    assert out[25:, :, 2].mean() > 200
    assert image_size(data) == (20, 40)
    path = tmp_path / "rot.jpg"
    path.write_bytes(data)
    assert decode_image(path).size == (20, 40)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 100, (100, 100, 100)),
        ("I", 257 * 50, (50, 50, 50)),
        ("I", 77, (77, 77, 77)),  # 32-bit holding 8-bit values stays as is
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_gray_and_high_bit_depth_modes(mode, value, expected):
    img = Image.new(mode, (8, 6), value)
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    out = decode_image(_save(img, fmt))
    assert out.mode == "RGB" and out.getpixel((3, 3)) == expected


def test_16bit_png_from_numpy():
    array = np.full((5, 7), 40000, dtype=np.uint16)
    out = decode_image(_save(Image.fromarray(array), "PNG"))
    assert out.getpixel((0, 0)) == (round(40000 / 257),) * 3


def test_palette_cmyk_and_alpha():
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    assert decode_image(_save(pal, "PNG")).getpixel((1, 1)) == (10, 20, 30)

    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(cmyk, "JPEG", quality=95))
    r, g, b = out.getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60

    rgba = Image.new("RGBA", (6, 6), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = decode_image(_save(rgba, "PNG"))
    assert out.getpixel((3, 3)) == (255, 255, 255)  # composited on the white background
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert decode_image(_save(rgba, "PNG"), background=(0, 0, 0)).getpixel((3, 3)) == (0, 0, 0)

    la = Image.new("LA", (4, 4), (0, 0))
    assert decode_image(_save(la, "PNG")).getpixel((1, 1)) == (255, 255, 255)

    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    assert decode_image(_save(pal_t, "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_broken_inputs_raise_precise_errors(tmp_path):
    good = _save(_halves(64, 64), "JPEG")
    for cut in (len(good) // 2, len(good) - 10):  # truncated in the header / in the scan data
        with pytest.raises(ImageDecodeError, match=r"cannot (open|decode) image"):
            decode_image(good[:cut])
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"this is a text file, not a JPEG\n")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"")
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "missing.jpg")
    assert issubclass(ImageDecodeError, ValueError)


def test_pixel_limit_refuses_bombs_before_decoding():
    data = _save(Image.new("L", (200, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match=r"200x100 = 20000 pixels exceeds max_pixels=10000"):
        decode_image(data, max_pixels=10_000)
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        image_size(data, max_pixels=10_000)
    assert decode_image(data, max_pixels=20_000).size == (200, 100)


def test_fit_within_downscales_jpeg_while_decoding():
    data = _save(_halves(800, 400), "JPEG")
    image, full = decode_image_and_size(data, fit_within=(150, 150))
    assert full == (800, 400)
    assert image.size == (200, 100)  # 1/4 scale still covers the 150x75 fit; 1/8 would not
    assert decode_image(data, fit_within=(100, 100)).size == (100, 50)  # 1/8 covers 100x50 exactly
    assert decode_image(data).size == (800, 400)
    png = _save(_halves(800, 400), "PNG")
    assert decode_image(png, fit_within=(100, 100)).size == (800, 400)  # only JPEG can do this


def test_encode_and_format():
    img = _halves()
    assert image_format(encode_image(img, "JPEG")) == "jpg"
    assert image_format(encode_image(img, "PNG")) == "png"
    with pytest.raises(ImageDecodeError):
        image_format(b"GIF89a-not-really")
