"""Image decoding: the ONE place where bytes or a file become an RGB ``PIL.Image``.

Training, the shard converters and inference all decode through :func:`decode_image`, so they
agree on EXIF orientation (applied), exotic modes (CMYK, grayscale, palette, 16-bit, alpha:
composited on a background) and what counts as a broken file. Every failure is an
:class:`ImageDecodeError` whose message says what was wrong, never PIL's global bomb warning.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger files are refused before their pixels are read
BACKGROUND = (255, 255, 255)

# PIL format name -> file extension used as the webdataset member suffix
FORMAT_EXT = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "GIF": "gif",
    "TIFF": "tif",
    "PPM": "ppm",
}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")

# EXIF orientations 5..8 swap width and height
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageDecodeError(ValueError):
    """A file that is not a decodable image (unknown format, truncated, too large, ...)."""


def _open(data: bytes | str | Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only), refusing decompression bombs with our own limit."""
    name = str(data) if isinstance(data, (str, Path)) else f"<{len(data)} bytes>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(data if isinstance(data, (str, Path)) else io.BytesIO(data))
    except FileNotFoundError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{name}: not an image (unknown or corrupt header)") from e
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{name}: refused, {e}") from e
    except OSError as e:
        raise ImageDecodeError(f"{name}: cannot open image: {e}") from e
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{name}: empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"{name}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} (possible decompression bomb)"
        )
    return image


def image_size(data: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as :func:`decode_image` would return it (EXIF orientation applied), header only."""
    image = _open(data, max_pixels)
    w, h = image.size
    orientation = image.getexif().get(0x0112, 1)
    return (h, w) if orientation in _TRANSPOSING_ORIENTATIONS else (w, h)


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit and float rescaled to 8 bit, alpha composited on ``background``."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image).astype(np.float64)
        if mode == "F" and array.size and array.max() <= 1.0:
            array = array * 255.0
        elif mode != "F" and array.size and array.max() > 255:
            array = array / 257.0  # 16-bit range 0..65535 -> 0..255
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(
    data: bytes | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = BACKGROUND,
    fit_within: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode bytes or a file path to an RGB image with EXIF orientation applied.

    ``max_pixels`` refuses larger images before decoding them. ``fit_within`` (w, h): the image
    will be downscaled to fit this box afterwards, so a JPEG may be decoded at 1/2, 1/4 or 1/8
    scale (libjpeg's DCT scaling) as long as the result still covers the fitted size: a large
    speed-up for photos much bigger than the model input. Raises :class:`ImageDecodeError` for
    anything that is not a complete, decodable image; ``FileNotFoundError`` for a missing path.
    """
    return decode_image_and_size(data, max_pixels=max_pixels, background=background, fit_within=fit_within)[0]


def decode_image_and_size(
    data: bytes | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = BACKGROUND,
    fit_within: tuple[int, int] | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`decode_image` plus the full-resolution (width, height) after EXIF orientation, which
    differs from the returned image's size when ``fit_within`` let the decoder downscale."""
    image = _open(data, max_pixels)
    name = str(data) if isinstance(data, (str, Path)) else f"<{len(data)} bytes>"
    try:
        transposed = image.getexif().get(0x0112, 1) in _TRANSPOSING_ORIENTATIONS
        w, h = image.size
        if fit_within is not None and image.format == "JPEG":
            box_w, box_h = (fit_within[1], fit_within[0]) if transposed else fit_within
            scale = min(box_w / w, box_h / h, 1.0)
            image.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image, background), ((h, w) if transposed else (w, h))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{name}: cannot decode image: {e}") from e


def as_rgb_image(image: Image.Image | np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS,
                 background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """A decoded image (PIL, or an (H, W) / (H, W, 3|4) uint8 array) -> RGB, as :func:`decode_image`
    converts decoded files (alpha on ``background``; ``max_pixels`` applies too)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ImageDecodeError(
                f"an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {image.dtype} {tuple(image.shape)}"
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ImageDecodeError(
            f"an image must be a PIL image, a uint8 array, a path or encoded bytes, got {type(image).__name__}"
        )
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}")
    return _to_rgb(image, background)


def encode_image(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode an RGB image (JPEG or PNG) to bytes."""
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt.upper())
    return buffer.getvalue()


def image_format(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The webdataset suffix (``jpg``, ``png``, ...) matching the image bytes' real format."""
    fmt = _open(data, max_pixels).format or ""
    if fmt not in FORMAT_EXT:
        raise ImageDecodeError(f"unsupported image format {fmt or 'unknown'!r}")
    return FORMAT_EXT[fmt]
