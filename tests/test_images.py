"""formats/images.py: round trips through real files, and bad files rejected with a reason."""

import io
import os
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from formats.images import (
    MAX_PIXELS, BadImage, DecodedImage, contact_sheet, encode_image, find_images, map_bands, read_image, to_uint8,
)

RNG = np.random.default_rng(0)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _save(path, arr_or_im, fmt=None, **options):
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    im.save(path, fmt, **options)
    return path


def _reread(tmp_path, d: DecodedImage, pixels=None, name="out") -> DecodedImage:
    """encode_image(d) -> file -> read_image: what a denoise stage does with an identity model."""
    return read_image(_write(tmp_path / name, encode_image(d.pixels if pixels is None else pixels, d)))


def _png(width, height, bit_depth, colour_type, scanlines: bytes, extra=()) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(t, d) for t, d in extra)
            + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b""))


def _png16(a: np.ndarray, extra=()) -> bytes:
    """16-bit PNG of a (H, W, C) uint16, rows cycling through all five filter types (PNG spec 9.2),
    so that the reader is tested against Pillow's unfiltering of each."""
    h, w, c = a.shape
    x = a.astype(">u2").reshape(h, -1).view(np.uint8).astype(np.int32)  # (H, W*C*2) bytes
    bpp = 2 * c
    up = np.vstack([np.zeros_like(x[:1]), x[:-1]])
    left = np.pad(x, ((0, 0), (bpp, 0)))[:, :-bpp]
    upleft = np.pad(up, ((0, 0), (bpp, 0)))[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    preds = [0 * x, left, up, (left + up) // 2, paeth]
    ftype = np.arange(h) % 5
    filt = (x - np.choose(ftype[:, None], preds)) % 256
    rows = np.hstack([ftype[:, None], filt]).astype(np.uint8)
    return _png(w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], rows.tobytes(), extra)


def _ihdr_bit_depth(png: bytes) -> int:
    return png[24]


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 3)])
def test_png_8bit_round_trip_is_exact(tmp_path, shape):
    a = RNG.integers(0, 256, shape, dtype=np.uint8)
    d = read_image(_save(tmp_path / "a.png", a))
    assert (d.format, d.bit_depth, d.alpha) == ("PNG", 8, None)
    assert d.pixels.dtype == np.float32 and d.pixels.shape == (20, 30, 1 if len(shape) == 2 else 3)
    assert np.array_equal(to_uint8(d.pixels).reshape(shape), a)
    assert np.array_equal(_reread(tmp_path, d).pixels, d.pixels)


def test_png_16bit_grey_is_scaled_not_clipped_and_stays_16bit(tmp_path):
    a = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    d = read_image(_save(tmp_path / "g16.png", a))
    assert d.bit_depth == 16 and d.pixels.shape == (20, 30, 1)
    assert np.array_equal(np.rint(d.pixels[..., 0] * 65535).astype(np.uint16), a)
    out = encode_image(d.pixels, d)
    assert _ihdr_bit_depth(out) == 16
    assert np.array_equal(read_image(_write(tmp_path / "o.png", out)).pixels, d.pixels)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_16bit_colour_and_alpha_are_lossless(tmp_path, channels):
    # Pillow alone would keep only the high byte of 16-bit RGB / RGBA / grey+alpha samples.
    a = RNG.integers(0, 65536, (21, 13, channels), dtype=np.uint16)
    a[0, 0, -1] = 0  # one fully transparent pixel when there is alpha
    d = read_image(_write(tmp_path / "c16.png", _png16(a)))
    assert d.bit_depth == 16 and d.pixels.shape == (21, 13, 1 if channels < 3 else 3)
    if channels in (2, 4):
        assert np.array_equal(np.rint(d.alpha * 65535).astype(np.uint16), a[..., -1])
        assert np.all(d.pixels[0, 0] == 1.0)  # composited on white
    else:
        assert d.alpha is None
        assert np.array_equal(np.rint(d.pixels * 65535).astype(np.uint16), a)
    out = encode_image(d.pixels, d)
    assert _ihdr_bit_depth(out) == 16
    again = read_image(_write(tmp_path / "o.png", out))
    np.testing.assert_allclose(again.pixels, d.pixels, atol=1e-6)
    if channels in (2, 4):
        assert np.array_equal(again.alpha, d.alpha)


def test_jpeg_round_trip_is_close(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    a = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)  # smooth: JPEG-friendly
    d = read_image(_save(tmp_path / "a.jpg", a, quality=95))
    assert (d.format, d.bit_depth, d.pixels.shape) == ("JPEG", 8, (48, 64, 3))
    assert np.abs(d.pixels - a / 255).mean() < 2 / 255
    assert np.abs(_reread(tmp_path, d).pixels - d.pixels).mean() < 2 / 255


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 3), (20, 30, 4)])
def test_tiff_8bit_round_trip(tmp_path, shape):
    a = RNG.integers(0, 256, shape, dtype=np.uint8)
    d = read_image(_save(tmp_path / "a.tif", a, compression="tiff_lzw"))
    assert (d.format, d.bit_depth) == ("TIFF", 8)
    assert (d.alpha is not None) == (len(shape) == 3 and shape[2] == 4)
    again = _reread(tmp_path, d)
    assert np.array_equal(again.pixels, d.pixels) and again.format == "TIFF"


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("byteorder,compression", [("<", None), (">", None), ("<", "zlib")])
def test_tiff_16bit_is_lossless_and_stays_16bit(tmp_path, channels, byteorder, compression):
    a = RNG.integers(0, 65536, (17, 19, channels), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a if channels > 1 else a[..., 0], byteorder=byteorder,
                     photometric="rgb" if channels > 1 else "minisblack", compression=compression,
                     extrasamples=["unassalpha"] if channels == 4 else None, metadata=None)
    d = read_image(tmp_path / "a.tif")
    assert d.bit_depth == 16
    got = np.concatenate([d.pixels, d.alpha[..., None]], -1) if channels == 4 else d.pixels
    if channels == 4:  # undo the white composite to compare with the stored colour
        assert np.array_equal(np.rint(d.alpha * 65535), a[..., 3])
        visible = a[..., 3] > 655  # where 1/alpha does not amplify float rounding past 0.5 / 65535
        colour = (got[..., :3] - 1 + got[..., 3:]) / np.maximum(got[..., 3:], 1e-9)
        np.testing.assert_allclose(colour[visible] * 65535, a[..., :3][visible], atol=0.5)
    else:
        assert np.array_equal(np.rint(got * 65535).astype(np.uint16), a)
    out = encode_image(d.pixels, d)
    assert tifffile.TiffFile(io.BytesIO(out)).pages[0].bitspersample == 16
    again = read_image(_write(tmp_path / "o.tif", out))
    np.testing.assert_allclose(again.pixels, d.pixels, atol=1e-6)


def test_bmp_round_trip_is_exact(tmp_path):
    a = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    d = read_image(_save(tmp_path / "a.bmp", a))
    assert d.format == "BMP" and np.array_equal(to_uint8(d.pixels), a)
    assert np.array_equal(_reread(tmp_path, d).pixels, d.pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_webp_lossless_round_trip(tmp_path, mode):
    a = RNG.integers(0, 256, (20, 30, len(mode)), dtype=np.uint8)
    d = read_image(_save(tmp_path / "a.webp", a, lossless=True))
    assert d.format == "WEBP" and (d.alpha is not None) == (mode == "RGBA")
    again = _reread(tmp_path, d)
    np.testing.assert_allclose(again.pixels, d.pixels, atol=1e-6)
    if d.alpha is not None:
        assert np.array_equal(again.alpha, d.alpha)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white_and_restored(tmp_path, mode):
    a = RNG.integers(0, 256, (20, 30, len(mode)), dtype=np.uint8)
    a[0, 0] = (255, 0, 255, 0) if mode == "RGBA" else (0, 0)  # colour hidden under alpha = 0
    d = read_image(_save(tmp_path / "a.png", a))
    assert d.pixels.shape[-1] == (3 if mode == "RGBA" else 1)
    assert np.array_equal(d.alpha, a[..., -1] / np.float32(255))
    assert np.all(d.pixels[0, 0] == 1.0)  # white, not the hidden magenta
    again = _reread(tmp_path, d)
    assert np.array_equal(again.alpha, d.alpha)
    np.testing.assert_allclose(again.pixels, d.pixels, atol=1e-6)  # no double compositing


def test_palette_becomes_rgb_or_rgba(tmp_path):
    im = Image.fromarray(RNG.integers(0, 4, (10, 12), dtype=np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    d = read_image(_save(tmp_path / "p.png", im))
    assert d.pixels.shape == (10, 12, 3) and d.alpha is None
    assert np.array_equal(to_uint8(d.pixels), np.asarray(im.convert("RGB")))
    d = read_image(_save(tmp_path / "pt.png", im, transparency=0))
    assert d.alpha is not None and set(np.unique(d.alpha)) <= {0.0, 1.0}


def test_colour_key_transparency(tmp_path):
    a = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    d = read_image(_save(tmp_path / "k.png", a, transparency=tuple(int(v) for v in a[3, 4])))
    assert d.alpha[3, 4] == 0 and np.all(d.pixels[3, 4] == 1.0) and d.alpha.mean() > 0.9
    g = np.where(RNG.random((10, 12)) < 0.5, 255, 0).astype(np.uint8)
    d = read_image(_save(tmp_path / "k1.png", Image.fromarray(g).convert("1"), transparency=1))
    assert np.array_equal(d.alpha, (g == 0).astype(np.float32))  # 1-bit key 1 = white pixels
    two_bit = _png(4, 2, 2, 0, b"\0\x1b\0\xa0", [(b"tRNS", b"\0\2")])  # rows [0 1 2 3], [2 2 0 0]; key 2
    d = read_image(_write(tmp_path / "k2.png", two_bit))
    assert np.array_equal(d.alpha, [[1, 1, 0, 1], [0, 0, 1, 1]])
    a16 = RNG.integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    d = read_image(_write(tmp_path / "k16.png", _png16(a16, [(b"tRNS", a16[3, 4].astype(">u2").tobytes())])))
    assert d.bit_depth == 16 and d.alpha[3, 4] == 0 and d.alpha.sum() == a16.shape[0] * a16.shape[1] - 1


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    d = read_image(_save(tmp_path / "c.jpg", Image.new("CMYK", (16, 8), (255, 0, 0, 0))))  # cyan
    assert d.format == "JPEG" and d.pixels.shape == (8, 16, 3)
    np.testing.assert_allclose(d.pixels.mean((0, 1)), [0, 1, 1], atol=0.05)
    assert _reread(tmp_path, d).pixels.shape == (8, 16, 3)


def test_exif_orientation_is_applied_and_not_written_back(tmp_path):
    a = np.zeros((48, 64), np.uint8)
    a[:, 32:] = 255  # stored: left half dark
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    d = read_image(_save(tmp_path / "o.jpg", a, exif=exif))
    assert d.pixels.shape == (64, 48, 1)
    assert d.pixels[:20].mean() < 0.1 and d.pixels[-20:].mean() > 0.9  # the left half is now on top
    again = _reread(tmp_path, d, name="o2.jpg")
    assert again.pixels.shape == (64, 48, 1)  # upright, no stale orientation tag


def test_icc_profile_kept_when_it_matches_and_dropped_when_not(tmp_path):
    rgb_icc = bytes(16) + b"RGB " + bytes(108)
    cmyk_icc = bytes(16) + b"CMYK" + bytes(108)
    a = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for fmt in ("png", "jpg", "webp", "tif"):
        d = read_image(_save(tmp_path / f"i.{fmt}", a, icc_profile=rgb_icc))
        assert d.icc_profile == rgb_icc and _reread(tmp_path, d).icc_profile == rgb_icc
    c16 = read_image(_write(tmp_path / "c16.png", _png16(RNG.integers(0, 65536, (4, 4, 3), dtype=np.uint16))))
    like = DecodedImage(c16.pixels, None, "PNG", 16, rgb_icc)
    assert read_image(_write(tmp_path / "c16o.png", encode_image(c16.pixels, like))).icc_profile == rgb_icc
    like = DecodedImage(c16.pixels, None, "JPEG", 8, cmyk_icc)  # e.g. from a CMYK JPEG
    assert read_image(_write(tmp_path / "x.jpg", encode_image(c16.pixels, like))).icc_profile is None


def test_first_frame_of_multipage_tiff_and_real_format_of_misnamed_file(tmp_path):
    pages = [Image.new("RGB", (64, 48), "red"), Image.new("L", (16, 80))]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    assert read_image(tmp_path / "m.tif").pixels.shape == (48, 64, 3)
    _save(tmp_path / "j.png", np.zeros((4, 4, 3), np.uint8), "JPEG")
    assert read_image(tmp_path / "j.png").format == "JPEG"  # content decides, never the extension


def test_encode_refuses_nan_and_bad_shapes(tmp_path):
    d = read_image(_save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(ValueError, match="NaN"):
        encode_image(np.full((4, 4, 3), np.nan), d)
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((4, 4)), d)
    assert np.array_equal(to_uint8(np.array([-1.0, 0.5, 2.0])), [0, 128, 255])


# ---------------------------------------------------------------- bad inputs

def _reason(path) -> str:
    with pytest.raises(BadImage) as info:
        read_image(path)
    assert str(info.value) == f"{path}: {info.value.reason}" and "\n" not in str(info.value)
    return info.value.reason


@pytest.fixture
def good_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_empty_truncated_and_not_an_image(tmp_path, good_png):
    assert _reason(_write(tmp_path / "e.png", b"")) == "empty file"
    assert _reason(_write(tmp_path / "t.png", good_png[: len(good_png) // 2])) == "truncated image"
    assert "unrecognised format" in _reason(_write(tmp_path / "x.png", b"hello, not an image\n"))
    _save(tmp_path / "g.png", np.zeros((4, 4), np.uint8), "PCX")
    assert "unrecognised format" in _reason(tmp_path / "g.png")  # PCX decoder not enabled


def test_flipped_crc_and_flipped_data_are_rejected(tmp_path, good_png):
    idat = good_png.index(b"IDAT") - 4
    n = struct.unpack(">I", good_png[idat: idat + 4])[0]
    bad_crc = bytearray(good_png)
    bad_crc[idat + 8 + n] ^= 0xFF  # Pillow's load() alone would accept this file
    assert "checksum" in _reason(_write(tmp_path / "c.png", bytes(bad_crc)))
    bad_data = bytearray(good_png)
    bad_data[idat + 8 + n // 2] ^= 0x01
    assert "corrupt" in _reason(_write(tmp_path / "d.png", bytes(bad_data)))


def test_non_regular_files_are_refused_without_opening(tmp_path, good_png):
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block forever
    assert "named pipe" in _reason(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    assert "directory" in _reason(tmp_path / "dir.png")
    _write(tmp_path / "real.png", good_png)
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert "symbolic link" in _reason(tmp_path / "link.png")
    assert "cannot stat" in _reason(tmp_path / "missing.png")


def test_bombs_are_rejected_before_decoding(tmp_path):
    # 1-bit PNG headers with (almost) no pixel data: only the size is tested.
    huge = _write(tmp_path / "huge.png", _png(20000, 20000, 1, 0, b""))  # 400 MP: Pillow's own error
    assert "exceeds the 120 MP limit" in _reason(huge)
    big = _write(tmp_path / "big.png", _png(12000, 11000, 1, 0, b""))  # 132 MP: only a Pillow warning
    assert _reason(big) == "12000x11000 = 132 MP exceeds the 120 MP limit (--max-pixels)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping read_image would fail here
        ok = _write(tmp_path / "ok.png", _png(10000, 10000, 1, 0, b"\0" * 100))  # 100 MP: within the cap
        assert _reason(ok) == "truncated image"  # got past the size check, then ran out of data
    assert 8000 * 6000 <= MAX_PIXELS


def test_unsupported_modes_are_named(tmp_path):
    _save(tmp_path / "f.tif", np.linspace(-320, 341, 20, dtype=np.float32).reshape(4, 5))
    assert "mode F" in _reason(tmp_path / "f.tif")
    _save(tmp_path / "i.tif", Image.fromarray(np.full((4, 5), 70000, np.int32)))
    assert "outside 0..65535" in _reason(tmp_path / "i.tif")


def test_bad_image_pickles():
    e = pickle.loads(pickle.dumps(BadImage("a/b.png", "truncated image")))
    assert (str(e), e.path, e.reason) == ("a/b.png: truncated image", "a/b.png", "truncated image")


# ---------------------------------------------------------------- listing

def test_find_images_walks_sorted_skips_hidden_and_does_not_follow_dir_links(tmp_path):
    root = tmp_path / "in"
    for rel in ["b.png", "a.JPG", "sub/c.tif", "sub/deep/d.webp", "notes.txt", ".hidden.png", "._b.png",
                ".aeflow/cache.png", "sub/.git/x.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # loop -> in/
    found = [p.relative_to(root).as_posix() for p in find_images(root)]
    assert found == ["a.JPG", "b.png", "sub/c.tif", "sub/deep/d.webp"]
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "nope")


# ---------------------------------------------------------------- contact sheet

def test_contact_sheet_is_a_png_of_the_expected_size(tmp_path):
    red = np.zeros((30, 60, 3), np.float32)
    red[..., 0] = 1
    grey = np.full((50, 20, 1), 0.5, np.float32)
    rows = [[red, grey, red], [grey, red, grey]]
    sheet = Image.open(io.BytesIO(contact_sheet(rows, cell=64)))
    assert sheet.format == "PNG" and sheet.size == (3 * 64 + 4 * 4, 2 * 64 + 3 * 4)
    assert sheet.getpixel((4 + 32, 4 + 32)) == (255, 0, 0)  # centre of the first cell
    labelled = Image.open(io.BytesIO(contact_sheet(rows, ["noisy", "denoised", "clean"], cell=64)))
    assert labelled.width == sheet.width and labelled.height > sheet.height
    with pytest.raises(ValueError):
        contact_sheet([[red]], labels=["a", "b"])


def test_contact_sheet_names_each_row(tmp_path):
    grey = np.full((40, 40, 1), 0.5, np.float32)
    plain = Image.open(io.BytesIO(contact_sheet([[grey, grey]] * 2, cell=64)))
    named = Image.open(io.BytesIO(contact_sheet([[grey, grey]] * 2, cell=64, captions=["a.png", "b/c.png"])))
    assert named.width == plain.width and named.height > plain.height
    strip = np.asarray(named.convert("L"))[4 + 64:4 + 64 + 18]              # under the first row
    assert strip.min() < 100                                                # text drawn there


# ---------------------------------------------------------------- kind and metadata kept (issue 17)

def _photo(h=256, w=384) -> np.ndarray:
    """(H, W, 3) uint8 natural photo content (JPEG sizes on random noise say nothing)."""
    from skimage import data
    return np.ascontiguousarray(data.astronaut()[:h, :w])


def _camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D Mark IV"   # Make, Model
    exif[0x0112] = 1                                                  # Orientation: upright
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"              # Exif IFD: DateTimeOriginal
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.0)                         # GPS latitude
    return exif


def _exif_of(path) -> tuple:
    exif = Image.open(path).getexif()
    return (exif.get(0x010F), exif.get(0x0110), exif.get_ifd(0x8769).get(0x9003),
            exif.get_ifd(0x8825).get(1), tuple(exif.get_ifd(0x8825).get(2) or ()))


def test_camera_jpeg_keeps_exif_dpi_icc_quality_and_size(tmp_path):
    icc = bytes(16) + b"RGB " + bytes(108)
    src = _save(tmp_path / "cam.jpg", _photo(), quality=85, subsampling=2, exif=_camera_exif(), dpi=(300, 300),
                icc_profile=icc)
    d = read_image(src)
    assert (d.quality, d.subsampling, d.dpi) == (85, 2, (300.0, 300.0))
    out = _write(tmp_path / "out.jpg", encode_image(d.pixels, d))
    assert _exif_of(out) == ("Canon", "Canon EOS 5D Mark IV", "2024:05:06 07:08:09", "N", (48.0, 51.0, 29.0))
    again = read_image(out)
    assert again.dpi == (300.0, 300.0) and again.icc_profile == icc and again.quality == 85
    assert again.subsampling == 2
    # Same content at the estimated quality: about the input's size (quality 95 4:4:4 made it 50-60 % larger).
    assert abs(out.stat().st_size / src.stat().st_size - 1) < 0.2, (out.stat().st_size, src.stat().st_size)
    # --jpeg-quality overrides the estimate
    assert read_image(_write(tmp_path / "q60.jpg", encode_image(d.pixels, d, quality=60))).quality == 60


def test_rotated_jpeg_keeps_exif_without_orientation(tmp_path):
    exif = _camera_exif()
    exif[0x0112] = 6
    d = read_image(_save(tmp_path / "r.jpg", _photo(64, 96), exif=exif))
    assert d.pixels.shape == (96, 64, 3)
    out = _write(tmp_path / "o.jpg", encode_image(d.pixels, d))
    assert Image.open(out).getexif().get(0x0112) is None and _exif_of(out)[:3] == _exif_of(tmp_path / "r.jpg")[:3]
    assert read_image(out).pixels.shape == (96, 64, 3)


def test_strip_metadata_drops_exif_dpi_and_text_but_keeps_icc(tmp_path):
    icc = bytes(16) + b"RGB " + bytes(108)
    d = read_image(_save(tmp_path / "a.jpg", _photo(64, 64), exif=_camera_exif(), dpi=(300, 300), icc_profile=icc))
    out = _write(tmp_path / "o.jpg", encode_image(d.pixels, d, strip_metadata=True))
    assert not Image.open(out).getexif() and "dpi" not in Image.open(out).info
    assert read_image(out).icc_profile == icc


@pytest.mark.parametrize("bits", [8, 16])
def test_png_keeps_text_dpi_and_exif(tmp_path, bits):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "scan 12")
    info.add_text("Comment", "Zürich → Genève")  # not Latin-1: iTXt
    a = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    if bits == 8:
        src = _save(tmp_path / "a.png", a, pnginfo=info, dpi=(600, 600), exif=_camera_exif())
    else:
        src = _write(tmp_path / "a.png", _png16(a.astype(np.uint16) * 257, [
            (b"tEXt", b"Title\0scan 12"), (b"pHYs", struct.pack(">IIB", 23622, 23622, 1))]))
    d = read_image(src)
    assert d.bit_depth == bits and ("Title", "scan 12") in d.text and d.dpi == pytest.approx((600, 600), abs=0.1)
    out = _write(tmp_path / "o.png", encode_image(d.pixels, d))
    again = read_image(out)
    assert again.text == d.text and again.dpi == pytest.approx((600, 600), abs=0.1) and again.bit_depth == bits
    if bits == 8:
        assert _exif_of(out)[:3] == ("Canon", "Canon EOS 5D Mark IV", "2024:05:06 07:08:09")
    assert read_image(_write(tmp_path / "s.png", encode_image(d.pixels, d, strip_metadata=True))).text == ()


def test_lossy_webp_stays_lossy_and_lossless_stays_lossless(tmp_path):
    a = _photo(64, 64)
    lossy = read_image(_save(tmp_path / "l.webp", a, quality=80))
    exact = read_image(_save(tmp_path / "x.webp", a, lossless=True))
    assert lossy.lossy and not exact.lossy
    assert read_image(_write(tmp_path / "lo.webp", encode_image(lossy.pixels, lossy))).lossy
    out = read_image(_write(tmp_path / "xo.webp", encode_image(exact.pixels, exact)))
    assert not out.lossy and np.array_equal(out.pixels, exact.pixels)
    anim = [Image.fromarray(a), Image.fromarray(a[::-1])]
    anim[0].save(tmp_path / "anim.webp", save_all=True, append_images=anim[1:], quality=70)
    d = read_image(tmp_path / "anim.webp")
    assert d.lossy and any("2 frames" in n for n in d.notes)


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_stays_palette_with_its_own_colours(tmp_path, fmt):
    pal = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * 12 * 3  # 16 entries: a 4-bit PNG
    im = Image.fromarray(RNG.integers(0, 4, (10, 12), dtype=np.uint8), "P")
    im.putpalette(pal)
    src = _save(tmp_path / f"p.{fmt}", im, transparency=3)
    d = read_image(src)
    assert d.mode == "P" and d.format == fmt.upper() and d.alpha is not None
    noisy = np.clip(d.pixels + RNG.normal(0, 0.05, d.pixels.shape).astype(np.float32), 0, 1)  # a denoiser's output
    out = Image.open(_write(tmp_path / f"o.{fmt}", encode_image(noisy, d)))
    assert out.mode == "P" and out.getpalette()[:12] == pal[:12]
    # nearest colour of the same palette: the indices come back; the transparent pixels stay transparent
    assert np.array_equal(np.asarray(out), np.asarray(Image.open(src)))
    assert out.info.get("transparency") == 3
    if fmt == "png":
        assert Image.open(tmp_path / "o.png").tile[0].args == Image.open(src).tile[0].args  # same bit depth


def test_single_frame_gif_and_animated_gif_and_multipage_tiff(tmp_path):
    a = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    d = read_image(_save(tmp_path / "s.gif", a))
    assert d.format == "GIF" and d.mode == "P" and d.notes == ()
    assert Image.open(_write(tmp_path / "o.gif", encode_image(d.pixels, d))).format == "GIF"
    frames = [Image.fromarray(a), Image.fromarray(a[::-1])]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert any("2 frames" in n and "only the first" in n for n in read_image(tmp_path / "anim.gif").notes)
    pages = [Image.new("RGB", (64, 48), "red"), Image.new("RGB", (32, 32)), Image.new("L", (16, 80))]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    assert read_image(tmp_path / "m.tif").notes == ("3 pages: only page 1 was denoised, pages 2-3 are not in "
                                                    "the output",)
    assert ".gif" in {p.suffix for p in find_images(tmp_path)}


def test_cmyk_jpeg_stays_cmyk(tmp_path):
    cmyk_icc = bytes(16) + b"CMYK" + bytes(108)
    d = read_image(_save(tmp_path / "c.jpg", Image.fromarray(_photo(32, 48)).convert("CMYK"), icc_profile=cmyk_icc))
    assert d.mode == "CMYK" and d.pixels.shape == (32, 48, 3)
    out = _write(tmp_path / "o.jpg", encode_image(d.pixels, d))
    assert Image.open(out).mode == "CMYK" and read_image(out).icc_profile == cmyk_icc
    np.testing.assert_allclose(read_image(out).pixels, d.pixels, atol=0.06)


def test_pillow_warnings_become_notes_not_stderr(tmp_path, recwarn):
    bad_exif = (b"Exif\0\0II*\0" + struct.pack("<IH", 8, 1)
                + struct.pack("<HHII", 0x010F, 2, 100, 1000) + struct.pack("<I", 0))  # Make: data past the end
    d = read_image(_save(tmp_path / "w.jpg", np.zeros((8, 8, 3), np.uint8), exif=bad_exif))
    assert d.notes == ("UserWarning: Tag data larger than file. Skipping tag 271",)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_folder_links_are_listed_as_left_out(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    (root / "link").symlink_to(root / "sub", target_is_directory=True)
    left_out = []
    assert [p.name for p in find_images(root, left_out)] == ["a.png"]
    assert [(p.name, r.split(",")[0]) for p, r in left_out] == [("link", "folder link")]


# ---------------------------------------------------------------- huge images (issue 17)

def test_max_pixels_refuses_from_the_header_in_milliseconds_and_can_be_raised(tmp_path):
    import time

    bomb = _write(tmp_path / "bomb.png", _png(10000, 10000, 1, 0, zlib.compress(b"")[:0]))  # claims 100 MP
    t = time.perf_counter()
    assert _reason_with(bomb, max_pixels=50_000_000) == "10000x10000 = 100 MP exceeds the 50 MP limit (--max-pixels)"
    assert time.perf_counter() - t < 0.5
    # 400 MP: above Pillow's own bomb error (2 x 89 MP); with the cap raised, the size check lets it through
    # (and the file then fails for its missing data, not its size).
    scan = _write(tmp_path / "scan.png", _png(20000, 20000, 1, 0, b""))
    assert "exceeds the 120 MP limit" in _reason_with(scan)
    assert "limit" not in _reason_with(scan, max_pixels=400_000_000)


def _reason_with(path, **kw) -> str:
    with pytest.raises(BadImage) as info:
        read_image(path, **kw)
    return info.value.reason


@pytest.mark.parametrize("bits", [8, 16])
def test_integers_above_keeps_one_integer_copy_and_map_bands_matches_whole_image(tmp_path, bits):
    a = RNG.integers(0, 2 ** bits, (1000, 37, 3), dtype=np.uint8 if bits == 8 else np.uint16)
    src = _write(tmp_path / "a.png", _png16(a) if bits == 16 else encode_image(
        a / np.float32(255), DecodedImage(a, None, "PNG", 8, None)))
    whole = read_image(src)
    d = read_image(src, integers_above=1000)
    assert d.pixels.dtype == a.dtype and np.array_equal(d.pixels, a)
    assert read_image(src, integers_above=10 ** 6).pixels.dtype == np.float32  # small: floats as before

    def blur(x):  # depends on the rows around: a band without context would differ at its edges
        return (np.roll(x, 1, 0) + x + np.roll(x, -1, 0)) / 3

    ref = blur(whole.pixels)
    ref[0], ref[-1] = whole.pixels[0], whole.pixels[-1]  # the image's own edges: no neighbours outside

    def blur_band(x):
        y = blur(x)
        y[0], y[-1] = x[0], x[-1]
        return y

    out = map_bands(d.pixels, blur_band, rows=100, margin=2)
    assert out.dtype == a.dtype
    top = 2 ** bits - 1
    np.testing.assert_array_equal(out, np.rint(np.clip(ref, 0, 1) * top))
    # integers in, integers out: encode_image writes them as they are
    assert np.array_equal(read_image(_write(tmp_path / "o.png", encode_image(out, d)), integers_above=0).pixels, out)


def test_uncompressed_tiff_is_memory_mapped(tmp_path):
    a = RNG.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "raw.tif", a, photometric="rgb")
    d = read_image(tmp_path / "raw.tif", integers_above=1000)
    assert isinstance(d.pixels, np.memmap) and np.array_equal(d.pixels, a)
    tifffile.imwrite(tmp_path / "z.tif", a, photometric="rgb", compression="zlib")
    z = read_image(tmp_path / "z.tif", integers_above=1000)
    assert not isinstance(z.pixels, np.memmap) and np.array_equal(z.pixels, a)


def test_read_thumbnail_is_the_strided_float_image(tmp_path):
    from formats.images import read_thumbnail

    a = RNG.integers(0, 256, (1030, 700, 3), dtype=np.uint8)
    src = _save(tmp_path / "a.png", a)
    t = read_thumbnail(src, 512)
    assert t.dtype == np.float32 and t.shape == (344, 234, 3)  # every 3rd pixel: ceil(1030 / 512)
    np.testing.assert_array_equal(t, read_image(src).pixels[::3, ::3])


def test_concurrent_reads_leave_the_warnings_machinery_as_it_was(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    bad_exif = (b"Exif\0\0II*\0" + struct.pack("<IH", 8, 1)
                + struct.pack("<HHII", 0x010F, 2, 100, 1000) + struct.pack("<I", 0))
    path = _save(tmp_path / "w.jpg", RNG.integers(0, 256, (256, 256, 3), dtype=np.uint8), exif=bad_exif)
    filters, show = list(warnings.filters), warnings.showwarning
    with ThreadPoolExecutor(8) as pool:
        notes = list(pool.map(lambda _: read_image(path).notes, range(64)))
    assert all(n == ("UserWarning: Tag data larger than file. Skipping tag 271",) for n in notes)
    assert warnings.filters == filters and warnings.showwarning is show


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_keeps_scanner_tags_and_dpi(tmp_path, bits):
    tags = Image.Exif()
    tags[271], tags[272], tags[306] = "Epson", "Perfection V850", "2024:01:02 03:04:05"
    if bits == 8:
        src = _save(tmp_path / "s.tif", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8), exif=tags, dpi=(1200, 1200))
    else:
        src = tmp_path / "s.tif"
        tifffile.imwrite(src, RNG.integers(0, 65536, (8, 8, 3), dtype=np.uint16), photometric="rgb",
                         resolution=(1200, 1200), resolutionunit="INCH",
                         extratags=[(271, "s", 0, "Epson", True), (272, "s", 0, "Perfection V850", True),
                                    (306, "s", 0, "2024:01:02 03:04:05", True)])
    d = read_image(src)
    out = _write(tmp_path / "o.tif", encode_image(d.pixels, d))
    got = Image.open(out).getexif()
    assert (got.get(271), got.get(272), got.get(306)) == ("Epson", "Perfection V850", "2024:01:02 03:04:05")
    assert read_image(out).dpi == (1200.0, 1200.0) and read_image(out).bit_depth == bits


def test_16bit_colour_png_exif_orientation_is_applied_once(tmp_path):
    exif = _camera_exif()
    exif[0x0112] = 6
    a = RNG.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    d = read_image(_write(tmp_path / "r.png", _png16(a, [(b"eXIf", exif.tobytes()[6:])])))
    assert d.pixels.shape == (6, 4, 3) and d.bit_depth == 16
    out = _write(tmp_path / "o.png", encode_image(d.pixels, d))
    assert Image.open(out).getexif().get(0x0112) is None and _exif_of(out)[:3] == _exif_of(tmp_path / "r.png")[:3]
    assert read_image(out).pixels.shape == (6, 4, 3)


def test_a_png_text_chunk_named_text_is_kept(tmp_path):
    a = RNG.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    d = read_image(_write(tmp_path / "t.png", _png16(a, [(b"tEXt", b"text\0hello")])))
    assert d.text == (("text", "hello"),)
