"""Untrusted bytes -> a decoded, upright, 8-bit RGB (or L) Pillow image.

Safety order: byte size (413) -> format sniffing (only PNG, JPEG, WebP, BMP, GIF, TIFF; others
415) -> header-only open and a pixel-count check against ``max_pixels`` *before* any pixel is
decoded (413) -> full decode inside ``try`` (truncated or corrupt data: 422 with Pillow's
reason; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never enabled) -> EXIF orientation -> mode
conversion.

Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, ~89 Mpx) stays in place: it
raises ``DecompressionBombError`` above twice that and warns above it; the warning is turned
into an error only inside our ``warnings.catch_warnings`` block (no global state is changed),
so the effective limit is ``min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)`` — or
``Image.MAX_IMAGE_PIXELS`` where the filter holds. (``catch_warnings`` is process-wide in
Python 3.11, so under concurrent decodes another thread may restore the filters early and the
warning is merely emitted; our own header check, which runs first, is the real guard.)

Transparency is composited onto **white**: transparent PNG/WebP/GIF files are overwhelmingly
cut-outs meant to be seen on a light page (product shots, icons), which is also how a browser
shows them to the user whose image we explain. (``Image.convert("RGB")`` would instead expose
whatever colour the encoder left under fully transparent pixels — often black, sometimes
garbage.)
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import BadImage, ImageTooLarge, UnsupportedMediaType

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND",
    "decode_base64_image",
    "decode_image",
    "to_8bit",
    "to_mode",
]

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
BACKGROUND = (255, 255, 255)

# Errors Pillow's decoders raise on corrupt input (SyntaxError: some plugins' header checks).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)

# Recognisable formats we refuse, so the client hears "SVG is not supported" rather than
# "cannot identify image".
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
)


def _sniff_refused(data: bytes) -> str | None:
    head = data[:512]
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return name
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brand = data[8:12].decode("latin-1").strip()
        return "AVIF" if brand.startswith("avi") else f"ISO media ({brand})"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml", b"<!doctype svg")) or b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return None


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
    )


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    mode: Literal["RGB", "L"] = "RGB",
) -> Image.Image:
    """Decode untrusted image bytes to an upright 8-bit ``mode`` image (first frame)."""
    size = len(data)
    if size > max_bytes:
        raise ImageTooLarge(f"image is {size} bytes; the limit is {max_bytes} bytes")
    if size == 0:
        raise BadImage("image is empty (0 bytes)")

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(
                f"image exceeds the decoder's pixel limit ({exc}); the limit is {max_pixels} pixels"
            ) from None
        except UnidentifiedImageError:
            refused = _sniff_refused(data)
            accepted = ", ".join(ALLOWED_FORMATS)
            if refused is not None:
                raise UnsupportedMediaType(
                    f"{refused} is not a supported image format; accepted: {accepted}"
                ) from None
            raise BadImage(
                f"cannot identify the image format ({size} bytes, starting {data[:8]!r});"
                f" accepted: {accepted}"
            ) from None
        except _DECODER_ERRORS as exc:
            raise BadImage(f"cannot read the image header: {exc}") from None

        with img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise BadImage(f"image has an empty size {width}x{height}")
            if width * height > max_pixels:
                raise _too_large(width, height, max_pixels)
            try:
                img.load()  # the first frame; later GIF/TIFF frames are never decoded
                upright = ImageOps.exif_transpose(img)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageTooLarge(f"{exc}; the limit is {max_pixels} pixels") from None
            except _DECODER_ERRORS as exc:
                raise BadImage(f"cannot decode the {img.format} image: {exc}") from None
            if upright is None:  # pragma: no cover - exif_transpose(in_place=False) returns one
                upright = img
            # Frames of a GIF/TIFF can have their own size; check what was actually decoded.
            if upright.width * upright.height > max_pixels:
                raise _too_large(upright.width, upright.height, max_pixels)
            try:
                return to_8bit(upright, mode)
            except ValueError as exc:
                raise BadImage(f"cannot convert image mode {upright.mode}: {exc}") from None


def to_8bit(img: Image.Image, mode: Literal["RGB", "L"] = "RGB") -> Image.Image:
    """Any Pillow mode -> 8-bit ``RGB`` or ``L``; alpha composited onto :data:`BACKGROUND`.

    * ``I;16*``: 16-bit samples scaled exactly, ``round(v / 257)`` (65535 -> 255), not clipped.
    * ``I`` (32-bit int, e.g. 16-bit PNGs in older Pillow, TIFF): read as 16-bit data, clipped
      to 0..65535, then ``/ 257``.
    * ``F`` (float TIFF): taken to be in [0, 1], clipped, ``* 255``.
    * ``1``, ``P``, ``CMYK``, ``YCbCr``, ``HSV``: Pillow's conversions (unsupported ones: 422).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be RGB or L, not {mode!r}")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return _high_depth_to_8bit(img).convert(mode)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert(mode)
    if img.mode == mode:
        return img.copy()
    return img.convert(mode)


def _high_depth_to_8bit(img: Image.Image) -> Image.Image:
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        out = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * 255.0
    else:
        values = np.asarray(img).astype(np.float64)
        out = np.clip(values, 0.0, 65535.0) / 257.0
    return Image.fromarray(np.floor(out + 0.5).astype(np.uint8), mode="L")


def to_mode(img: Image.Image, color: Literal["RGB", "BGR", "L"]) -> np.ndarray:
    """An image as a uint8 HxWxC array in the model's colour order (C = 3, or 1 for L).

    BGR is channel-reversed RGB. L uses Pillow's ITU-R 601-2 luma (as torchvision's Grayscale).
    """
    if color == "L":
        return np.asarray(to_8bit(img, "L"), dtype=np.uint8)[:, :, None]
    rgb = np.asarray(to_8bit(img, "RGB"), dtype=np.uint8)
    if color == "BGR":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if color == "RGB":
        return rgb
    raise ValueError(f"color must be RGB, BGR or L, not {color!r}")


_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_NON_BASE64 = re.compile(r"[^A-Za-z0-9+/=_-]")


def decode_base64_image(
    s: str,
    *,
    max_bytes: int,
    max_pixels: int,
    mode: Literal["RGB", "L"] = "RGB",
) -> Image.Image:
    """Decode a base64 image, optionally a ``data:image/<type>;base64,`` URL.

    Standard and URL-safe alphabets are accepted, whitespace is ignored and missing ``=``
    padding is tolerated. A data URL of a non-image type is 415; anything that is not base64
    is 422 naming the offending character or length.
    """
    text = s.strip()
    match = _DATA_URL.match(text)
    if match:
        mime = match["mime"].strip().lower()
        params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
        if not mime.startswith("image/"):
            raise UnsupportedMediaType(
                f"data URL has media type {mime or '(none)'!r}; expected image/*"
            )
        if "base64" not in params:
            raise BadImage("data URL must be base64-encoded (';base64,' is missing)")
        text = text[match.end() :]
    # Refuse oversized payloads before decoding them (whitespace counted: a bound, not a size).
    approx_bytes = len(text) * 3 // 4
    if approx_bytes > max_bytes + 3:
        raise ImageTooLarge(f"image is about {approx_bytes} bytes; the limit is {max_bytes} bytes")
    try:  # the common case, strict standard base64, in one C pass
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = _lenient_base64(text)
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, mode=mode)


def _lenient_base64(text: str) -> bytes:
    """Whitespace, the URL-safe alphabet and missing padding tolerated; anything else is a
    BadImage naming the offending character or length."""
    text = "".join(text.split())
    if not text:
        raise BadImage("image is empty (no base64 data)")
    bad = _NON_BASE64.search(text)
    if bad:
        raise BadImage(
            f"invalid base64: character {bad.group()!r} at position {bad.start()} is not in the"
            " base64 alphabet"
        )
    body = text.rstrip("=")
    if "=" in body:
        raise BadImage(f"invalid base64: padding '=' inside the data at position {body.index('=')}")
    if len(body) % 4 == 1:
        raise BadImage(f"invalid base64: {len(body)} characters cannot encode whole bytes")
    body += "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            data = base64.urlsafe_b64decode(body)
        else:
            data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadImage(f"invalid base64: {exc}") from None
    return data
