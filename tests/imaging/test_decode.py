import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import BadImage, ImageTooLarge, UnsupportedMediaType
from service.imaging.decode import decode_base64_image, decode_image, to_8bit, to_mode

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 4_000_000}


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def rgb_gradient(h: int = 6, w: int = 8) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 30, y * 40, (x + y) * 10], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


# ---- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip_exactly(fmt):
    src = rgb_gradient()
    params = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(src, fmt, **params), **LIMITS)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(src))


def test_jpeg_decodes_close_to_source():
    src = Image.new("RGB", (16, 16), (200, 100, 50))
    out = decode_image(encode(src, "JPEG", quality=95), **LIMITS)
    assert out.size == (16, 16)
    assert np.abs(np.asarray(out).astype(int) - [200, 100, 50]).max() <= 3


def test_animated_gif_gives_first_frame():
    frames = [Image.new("P", (4, 3), i) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        assert frame.getpixel((0, 0)) == i
    data = encode(frames[1], "GIF", save_all=True, append_images=[frames[2], frames[0]])
    out = decode_image(data, **LIMITS)
    assert out.size == (4, 3)
    assert out.getpixel((0, 0)) == (255, 0, 0)


# ---- modes ---------------------------------------------------------------------------------


def test_gray_l_becomes_equal_rgb_channels():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = np.asarray(decode_image(encode(Image.fromarray(arr)), **LIMITS))
    np.testing.assert_array_equal(out, np.repeat(arr[:, :, None], 3, axis=2))


def test_one_bit_image():
    img = Image.new("1", (3, 2), 0)
    img.putpixel((1, 0), 1)
    out = np.asarray(decode_image(encode(img), **LIMITS))
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_rgba_composited_on_white():
    arr = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    out = np.asarray(decode_image(encode(Image.fromarray(arr)), **LIMITS))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]  # fully transparent -> background
    blended = out[0, 2].astype(int)  # half blue over white
    assert np.abs(blended - [127, 127, 255]).max() <= 1


def test_la_mode_composited():
    arr = np.array([[[0, 255], [0, 0]]], dtype=np.uint8)
    out = np.asarray(decode_image(encode(Image.fromarray(arr, "LA")), **LIMITS))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]


def test_palette_and_palette_with_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = np.asarray(decode_image(encode(img), **LIMITS))
    assert out.tolist() == [[[10, 20, 30], [200, 100, 0]]]
    img.info["transparency"] = 0
    out = np.asarray(decode_image(encode(img, transparency=0), **LIMITS))
    assert out.tolist() == [[[255, 255, 255], [200, 100, 0]]]


def test_pa_mode():
    img = Image.new("PA", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    img.putpixel((0, 0), (1, 255))
    img.putpixel((1, 0), (1, 0))
    out = np.asarray(decode_image(encode(img.convert("RGBA")), **LIMITS))
    direct = np.asarray(to_8bit(img))
    assert out.tolist() == [[[200, 100, 0], [255, 255, 255]]]
    assert direct.tolist() == out.tolist()


def test_cmyk_jpeg_and_tiff():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    for fmt in ("JPEG", "TIFF"):
        out = np.asarray(decode_image(encode(cmyk, fmt), **LIMITS)).astype(int)
        assert np.abs(out - [255, 0, 0]).max() <= 3, fmt


def test_ycbcr_converted():
    img = Image.new("RGB", (2, 2), (0, 128, 255)).convert("YCbCr")
    out = np.asarray(to_8bit(img)).astype(int)
    assert np.abs(out - [0, 128, 255]).max() <= 2


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bit
    img = Image.fromarray(values)
    data = encode(img)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode in ("I;16", "I")  # really a 16-bit PNG
    out = np.asarray(decode_image(data, **LIMITS))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    gray = np.asarray(decode_image(data, mode="L", **LIMITS))
    assert gray[0].tolist() == [0, 1, 128, 255]


def test_float_and_int_modes():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32))
    assert np.asarray(to_8bit(f, "L"))[0].tolist() == [0, 128, 255, 255]
    i = Image.fromarray(np.array([[0, 257, 65535, 70000]], dtype=np.int32))
    assert np.asarray(to_8bit(i, "L"))[0].tolist() == [0, 1, 255, 255]


def test_to_mode_orders_channels():
    img = Image.new("RGB", (2, 1), (10, 20, 30))
    assert to_mode(img, "RGB")[0, 0].tolist() == [10, 20, 30]
    assert to_mode(img, "BGR")[0, 0].tolist() == [30, 20, 10]
    luma = to_mode(img, "L")
    assert luma.shape == (1, 2, 1) and luma.dtype == np.uint8
    assert luma[0, 0, 0] == round(10 * 0.299 + 20 * 0.587 + 30 * 0.114)


# ---- orientation ---------------------------------------------------------------------------


def test_exif_orientation_six_rotates():
    src = Image.new("RGB", (40, 20), (0, 0, 0))
    src.paste((255, 255, 255), (0, 0, 10, 10))  # white square top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(src, "JPEG", exif=exif.tobytes(), quality=95), **LIMITS)
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[3, 16].min() > 200  # top-left moved to top-right
    assert arr[3, 3].max() < 50


# ---- refusals ------------------------------------------------------------------------------


def test_zero_bytes():
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"", **LIMITS)


def test_byte_limit_checked_first():
    with pytest.raises(ImageTooLarge, match=r"1001 bytes; the limit is 1000"):
        decode_image(b"\x00" * 1001, max_bytes=1000, max_pixels=10)


def test_pixel_limit_names_size_and_limit():
    data = encode(Image.new("RGB", (30, 20)))
    with pytest.raises(ImageTooLarge, match=r"30x20 = 600 pixels; the limit is 599"):
        decode_image(data, max_bytes=10_000, max_pixels=599)
    decode_image(data, max_bytes=10_000, max_pixels=600)


def huge_png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def test_huge_png_header_refused_before_allocation():
    data = huge_png_header(100_000, 100_000)
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="limit"):
        decode_image(data, **LIMITS)
    assert time.perf_counter() - start < 0.5


def test_header_above_own_limit_but_below_pillow_bomb_limit():
    data = huge_png_header(5000, 5000)  # 25 Mpx: Pillow would allocate; we must not
    with pytest.raises(ImageTooLarge, match=r"5000x5000 = 25000000 pixels; the limit is 4000000"):
        decode_image(data, **LIMITS)


def test_pillow_bomb_warning_is_an_error_locally(recwarn):
    import warnings

    limit_before, filters_before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    data = huge_png_header(10_000, 10_000)  # 100 Mpx: Pillow only warns at this size
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_bytes=10_000, max_pixels=10**9)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert list(warnings.filters) == filters_before


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_bad_images(fmt):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noisy, fmt)
    with pytest.raises(BadImage) as info:
        decode_image(data[: len(data) // 2], **LIMITS)
    assert info.value.status == 422
    assert info.value.detail  # the decoder's reason


def test_garbage_is_bad_image():
    with pytest.raises(BadImage, match="cannot identify"):
        decode_image(b"hello, this is not an image", **LIMITS)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    ],
)
def test_svg_and_pdf_refused(data, name):
    with pytest.raises(UnsupportedMediaType, match=name) as info:
        decode_image(data, **LIMITS)
    assert info.value.status == 415


def test_other_pillow_formats_refused():
    data = encode(Image.new("RGB", (4, 4)), "PPM")
    with pytest.raises((BadImage, UnsupportedMediaType)):
        decode_image(data, **LIMITS)


# ---- base64 --------------------------------------------------------------------------------


def test_base64_plain_and_data_url():
    data = encode(rgb_gradient())
    b64 = base64.b64encode(data).decode()
    ref = np.asarray(rgb_gradient())
    np.testing.assert_array_equal(np.asarray(decode_base64_image(b64, **LIMITS)), ref)
    url = "data:image/png;base64," + b64
    np.testing.assert_array_equal(np.asarray(decode_base64_image(url, **LIMITS)), ref)
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)).rstrip("=")
    np.testing.assert_array_equal(np.asarray(decode_base64_image(wrapped, **LIMITS)), ref)


def test_base64_urlsafe_alphabet():
    data = encode(rgb_gradient(20, 20))
    urlsafe = base64.urlsafe_b64encode(data).decode()
    out = decode_base64_image(urlsafe, **LIMITS)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(rgb_gradient(20, 20)))


def test_base64_junk_names_the_problem():
    with pytest.raises(BadImage, match=r"character '\*' at position 4"):
        decode_base64_image("abcd*efg", **LIMITS)
    with pytest.raises(BadImage, match="5 characters"):
        decode_base64_image("abcde", **LIMITS)
    with pytest.raises(BadImage, match="empty"):
        decode_base64_image("   ", **LIMITS)
    with pytest.raises(BadImage, match="cannot identify"):
        decode_base64_image(base64.b64encode(b"not an image").decode(), **LIMITS)


def test_data_url_with_wrong_mime():
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        decode_base64_image("data:text/plain;base64,aGVsbG8=", **LIMITS)
    with pytest.raises(BadImage, match="base64"):
        decode_base64_image("data:image/png,%89PNG", **LIMITS)


def test_base64_size_limit_before_decoding():
    with pytest.raises(ImageTooLarge, match="limit is 100 bytes"):
        decode_base64_image("A" * 1000, max_bytes=100, max_pixels=100)
