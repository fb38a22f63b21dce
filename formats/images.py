"""Image files <-> float arrays, with a reject-with-reason policy for anything wrong.

`read_image` turns one file into `DecodedImage` (float32 (H, W, C) in [0, 1], C in {1, 3}) or raises
`BadImage` with a one-line reason; `encode_image` writes pixels back in the format and bit depth they
came from. The policy follows the measurements in shared/notes/reliability.md, section 1 (Pillow 13).
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
MAX_PIXELS = 120_000_000  # decompression-bomb cap; an 8000x6000 photo (48 MP) passes
MAX_BYTES = 1 << 30  # file-size cap, checked with lstat before anything is opened
# Only the decoders we need: most Pillow CVEs are in decoders for formats nobody feeds a denoiser.
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
_ALPHA_FORMATS = ("PNG", "TIFF", "WEBP")  # JPEG and BMP have no alpha channel
_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N")


class BadImage(ValueError):
    """A file that cannot be used as an input image; str(e) == f"{path}: {reason}"."""

    def __init__(self, path, reason: str):
        # args = (path, reason), not the message, so the exception survives pickling (Prefect, workers).
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # float32 (H, W, C), C in {1, 3}, in [0, 1]; alpha composited on white
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1] when the source had transparency, else None
    format: str  # Pillow format name: "PNG", "JPEG", "TIFF", "BMP", "WEBP"
    bit_depth: int  # 8 or 16 bits per channel in the source
    icc_profile: bytes | None


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder` by suffix, sorted. Hidden entries (".aeflow/", "._x.png") are skipped
    and directory links are not followed (a `loop -> .` link would otherwise recurse 40 levels)."""

    def fail(e: OSError):  # os.walk silently skips unreadable folders by default: inputs must not vanish
        raise e

    found = []
    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, f) for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def read_image(path: Path) -> DecodedImage:
    """Decode one file fully, or raise BadImage saying what is wrong with it."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by someone else in this process: truncation would pass silently
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; read_image refuses to run with it")
    try:
        st = os.lstat(path)
    except OSError as e:
        raise BadImage(path, f"cannot stat ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block Image.open forever; links may leave the input tree
        raise BadImage(path, f"not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise BadImage(path, "empty file")
    if st.st_size > MAX_BYTES:
        raise BadImage(path, f"{st.st_size} bytes exceeds the {MAX_BYTES} byte limit")
    try:
        # O_NOFOLLOW | O_NONBLOCK: if the file was swapped for a link or a FIFO since lstat, fail, don't hang.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise BadImage(path, "not a regular file (changed while opening)")
            with warnings.catch_warnings():
                # Pillow warns above 89 MP, below our cap; the size check in _decode decides.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return _decode(path, fh)
    except BadImage:
        raise
    except Exception as e:  # per-file boundary: Pillow raises OSError, SyntaxError, ValueError, TypeError...
        raise BadImage(path, _reason(e)) from e


def _decode(path, fh) -> DecodedImage:
    im = Image.open(fh, formats=FORMATS)
    w, h = im.size
    if w * h > MAX_PIXELS:  # from the header, before any pixel is decoded
        raise BadImage(path, f"{w}x{h} = {w * h / 1e6:.0f} MP exceeds the {MAX_PIXELS / 1e6:.0f} MP limit")
    fmt = "JPEG" if im.format == "MPO" else im.format  # MPO = a JPEG with extra frames (phone cameras)
    icc = im.info.get("icc_profile") or None
    if fmt == "PNG":
        # Pillow's load() skips the IDAT checksums; verify() checks every chunk's CRC. A verified
        # object cannot be loaded, so reopen (and never reuse an object whose load failed).
        im.verify()
        fh.seek(0)
        im = Image.open(fh, formats=FORMATS)
    rawmode, key = _rawmode(im), im.info.get("transparency")
    if im.mode in ("RGB", "RGBA") and ";16" in rawmode:
        x = _decode_16bit_colour(path, fh, rawmode)  # Pillow would keep only the high byte of each sample
    else:
        im.load()  # full decode now: truncated or corrupt data raises here, not later
        x = _to_array(path, ImageOps.exif_transpose(im))
    if key is not None and im.mode not in ("P", "PA") and x.shape[-1] in (1, 3):
        # PNG tRNS on grey or RGB: one colour means transparent. Pillow keeps 2- and 4-bit grey keys
        # in the file's units, so they are scaled like the pixels were.
        key = np.asarray(key) * {"L;2": 85, "L;4": 17}.get(rawmode, 1)
        opaque = (x != key.astype(x.dtype)).any(-1, keepdims=True)
        x = np.concatenate([x, opaque * np.iinfo(x.dtype).max], -1).astype(x.dtype)
    return _split(x, fmt, icc)


def _decode_16bit_colour(path, fh, rawmode: str) -> np.ndarray:
    """(H, W, C) uint16, lossless: decode twice with Pillow's own decoder (unfiltering, decompression),
    once with the usual unpacker, which keeps the most significant byte of each 16-bit sample, and once
    with the same unpacker for the opposite byte order, which therefore yields the least significant byte."""
    if rawmode == "LA;16B":  # 16-bit grey + alpha PNG: Pillow has no LA;16L, but the 8-bit RGBA
        b = _decode_as(fh, "RGBA").astype(np.uint16)  # unpacker has the same 4 bytes/pixel: (Lh, Ll, Ah, Al)
        return (b[..., 0::2] << 8) | b[..., 1::2]  # (H, W, 2): grey, alpha
    m = re.fullmatch(r"(RGBA?|RGBX);16([BLN])", rawmode)
    if not m:
        raise BadImage(path, f"16-bit colour layout {rawmode} is not supported; convert to 16-bit RGB(A) PNG")
    native = "L" if sys.byteorder == "little" else "B"
    other = {"B": "L", "L": "B"}[native if m[2] == "N" else m[2]]
    hi, lo = _decode_as(fh, rawmode), _decode_as(fh, f"{m[1]};16{other}")
    return (hi.astype(np.uint16) << 8) | lo


def _decode_as(fh, rawmode: str) -> np.ndarray:
    fh.seek(0)
    im = Image.open(fh, formats=FORMATS)
    # A tile is (codec, box, offset, args); args is the raw mode (PNG) or starts with it (TIFF).
    im.tile = [t._replace(args=rawmode if isinstance(t.args, str) else (rawmode, *t.args[1:]))
               for t in im.tile]
    im.load()
    return np.asarray(ImageOps.exif_transpose(im))


def _rawmode(im: Image.Image) -> str:
    args = im.tile[0].args if im.tile else ""
    return args if isinstance(args, str) else str(args[0]) if args else ""


def _to_array(path, im: Image.Image) -> np.ndarray:
    """(H, W, C) uint8 or uint16 with C in 1..4 (grey, grey+alpha, RGB, RGBA)."""
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "RGBX"):
        im = im.convert("RGB")  # CMYK: naive conversion, no colour management
    elif mode not in ("L", "LA", "RGB", "RGBA", "I", *_GREY_16):
        raise BadImage(path, f"unsupported pixel mode {mode} (supported: 1, L, LA, P, PA, RGB, RGBA, "
                             "CMYK, I;16, I with values in 0..65535)")
    x = np.asarray(im)
    if mode == "I":  # 32-bit int (e.g. signed 16-bit TIFF): accepted only as 16-bit data
        if x.size and (x.min() < 0 or x.max() > 65535):
            raise BadImage(path, f"mode I values {x.min()}..{x.max()} are outside 0..65535")
        x = x.astype(np.uint16)
    elif mode in _GREY_16:
        x = x.astype(np.uint16)  # I;16B arrives big-endian
    return x[..., None] if x.ndim == 2 else x


def _split(x: np.ndarray, fmt: str, icc: bytes | None) -> DecodedImage:
    """(H, W, C [+ alpha]) integers -> floats in [0, 1], alpha composited on white."""
    scale = np.float32(np.iinfo(x.dtype).max)  # 255 or 65535: scaled, never clipped
    f = x.astype(np.float32)
    f /= scale  # in place: one float copy of a possibly 48 MP image, not two
    alpha = None
    if f.shape[-1] in (2, 4):
        f, alpha = f[..., :-1], f[..., -1]
        f = f * alpha[..., None] + (1 - alpha[..., None])  # white shows, not colour hidden under alpha = 0
    return DecodedImage(np.ascontiguousarray(f), alpha, fmt, 8 * x.itemsize, icc)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device"


def _reason(e: Exception) -> str:
    """One line saying what is wrong, from whatever Pillow raised."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image (unrecognised format; PNG, JPEG, TIFF, BMP and WebP are read)"
    if isinstance(e, Image.DecompressionBombError):  # Pillow's own check, above 2 x MAX_IMAGE_PIXELS
        size = re.search(r"\((\d+) pixels\)", str(e))              # Pillow names the image's own size
        what = f"{int(size.group(1)) / 1e6:.0f} MP" if size else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP"
        return f"image of {what} exceeds the {MAX_PIXELS / 1e6:.0f} MP limit (decompression bomb)"
    msg = " ".join(str(e).split())[:160]
    if "truncated" in msg.lower():
        return "truncated image"
    return f"corrupt or unsupported data ({type(e).__name__}: {msg})" if msg else \
        f"corrupt or unsupported data ({type(e).__name__})"


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 (clipped, rounded)."""
    return _quantise(np.asarray(x01), 255)


def _quantise(x: np.ndarray, top: int) -> np.ndarray:
    # min/max propagate NaN and inf without a full-size temporary (48 MP photos: every copy is 0.5 GB)
    if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        raise ValueError("pixels contain NaN or infinity")  # would become arbitrary bytes: a model bug
    y = np.clip(x, 0.0, 1.0, dtype=np.float32)  # the one float copy; then in place
    y *= top
    np.rint(y, out=y)
    return y.astype(np.uint8 if top == 255 else np.uint16)


def encode_image(pixels: np.ndarray, like: DecodedImage) -> bytes:
    """File bytes of `pixels` (float (H, W, C), C in {1, 3}) in the format, bit depth, alpha and ICC
    profile of `like`. JPEG: quality 95, 4:4:4; WebP: lossless. No EXIF is written (pixels are upright)."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got shape {x.shape}")
    if like.alpha is not None and like.format in _ALPHA_FORMATS:
        if like.alpha.shape != x.shape[:2]:
            raise ValueError(f"pixels are {x.shape[:2]} but the alpha of `like` is {like.alpha.shape}")
        a = like.alpha[..., None]
        # Undo read_image's composite on white, so the stored colour seen through alpha gives `pixels`.
        x = np.where(a > 0, (x - (1 - a)) / np.maximum(a, 1e-12), 1.0)
        x = np.concatenate([x, a], -1)
    sixteen = like.bit_depth == 16 and like.format in ("PNG", "TIFF")
    q = _quantise(x, 65535 if sixteen else 255)  # (H, W, C [+ alpha])
    icc = like.icc_profile
    # An ICC profile describes one colour space; a CMYK source's profile on RGB output would be wrong.
    if icc and icc[16:20] != (b"GRAY" if x.shape[-1] in (1, 2) else b"RGB "):
        icc = None
    if sixteen and like.format == "PNG":
        return _png16(q, icc)  # Pillow writes 16-bit grey only
    if sixteen:
        return _tiff16(q, icc)
    options = {
        "PNG": {}, "BMP": {}, "JPEG": {"quality": 95, "subsampling": 0},
        "TIFF": {"compression": "tiff_adobe_deflate"}, "WEBP": {"lossless": True},
    }[like.format]
    if icc and like.format != "BMP":
        options["icc_profile"] = icc
    buf = io.BytesIO()
    Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q).save(buf, like.format, **options)
    return buf.getvalue()


def _png16(q: np.ndarray, icc: bytes | None) -> bytes:
    """16-bit PNG of q (H, W, C) uint16, C = 1..4 (grey, grey+alpha, RGB, RGBA); PNG spec section 11-12."""
    h, w, c = q.shape
    rows = q.astype(">u2").reshape(h, w * c).view(np.uint8)  # (H, W*C*2) big-endian bytes
    bpp = 2 * c
    sub = rows.copy()
    sub[:, bpp:] -= rows[:, :-bpp]  # filter type 1 (Sub), wrapping mod 256; compresses far better than none
    idat = np.concatenate([np.ones((h, 1), np.uint8), sub], axis=1)  # one filter-type byte per row
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0))]
    if icc:
        chunks.append((b"iCCP", b"icc\0\0" + zlib.compress(icc)))  # name, NUL, method 0 (deflate)
    chunks += [(b"IDAT", zlib.compress(idat.tobytes(), 6)), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)


def _tiff16(q: np.ndarray, icc: bytes | None) -> bytes:
    import tifffile  # only 16-bit TIFF output needs it (Pillow cannot write 16-bit colour)

    c = q.shape[-1]
    buf = io.BytesIO()
    tifffile.imwrite(
        buf, q[..., 0] if c == 1 else q, photometric="minisblack" if c <= 2 else "rgb",
        planarconfig="contig" if c > 1 else None, extrasamples=["unassalpha"] if c in (2, 4) else None,
        compression="zlib", predictor=True,  # horizontal differencing: much smaller on smooth images
        iccprofile=icc, metadata=None)  # metadata=None: no tifffile JSON description
    return buf.getvalue()


_LABEL_H, _PAD = 22, 4


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str] | None = None, cell: int = 256,
                  captions: list[str] | None = None) -> bytes:
    """PNG bytes of a grid, one row per image and one column per variant (e.g. noisy / denoised / clean).
    Each image (float (H, W, C) in [0, 1], grey or RGB) is scaled to fit `cell` px, keeping its aspect;
    nearest-neighbour when enlarging so noise stays visible. `labels` name the columns, drawn on top;
    `captions` name the rows (e.g. the file), drawn under each (a long one keeps its end)."""
    ncols = max((len(r) for r in rows), default=0)
    if not rows or ncols == 0:
        raise ValueError("contact_sheet needs at least one row with one image")
    if labels is not None and len(labels) > ncols:
        raise ValueError(f"{len(labels)} labels for {ncols} columns")
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"{len(captions)} captions for {len(rows)} rows")
    top = _LABEL_H if labels else 0
    below = _LABEL_H if captions else 0          # under each row
    pitch = cell + _PAD + below
    width = ncols * (cell + _PAD) + _PAD
    sheet = Image.new("RGB", (width, top + len(rows) * pitch + _PAD), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for j, text in enumerate(labels or []):
        centre = (_PAD + j * (cell + _PAD) + cell // 2, top // 2)
        draw.text(centre, text, fill=(0, 0, 0), font=font, anchor="mm")
    for i, row in enumerate(rows):
        bottom = top + _PAD + i * pitch           # of the row's tallest image: its caption goes just under
        for j, img in enumerate(row):
            u8 = to_uint8(img)
            tile = Image.fromarray(u8.reshape(u8.shape[:2]) if u8.ndim == 3 and u8.shape[-1] == 1 else u8)
            scale = cell / max(tile.size)
            size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
            tile = tile.convert("RGB").resize(
                size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
            x0 = _PAD + j * (cell + _PAD) + (cell - size[0]) // 2
            y0 = top + _PAD + i * pitch + (cell - size[1]) // 2
            sheet.paste(tile, (x0, y0))
            bottom = max(bottom, y0 + size[1])
        if captions:
            text = captions[i]
            while len(text) > 1 and draw.textlength(text, font=font) > width - 2 * _PAD:
                text = "..." + text[4:]          # a long path: keep the end, where the file name is
            draw.text((width // 2, bottom + 3), text, fill=(0, 0, 0), font=font, anchor="mt")
    buf = io.BytesIO()
    sheet.save(buf, "PNG", compress_level=3)   # a preview, one page of many: 3.5x faster than 6, 10 % larger
    return buf.getvalue()
