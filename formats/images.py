"""Image files <-> float arrays, with a reject-with-reason policy for anything wrong.

`read_image` turns one file into `DecodedImage` (float32 (H, W, C) in [0, 1], C in {1, 3}) or raises
`BadImage` with a one-line reason; `encode_image` writes pixels back in the format, bit depth and kind they
came from (palette, CMYK, lossy or lossless WebP, the JPEG's quality and chroma subsampling) with the
source's metadata (EXIF, ICC profile, DPI, PNG text). What the reader had to leave out or was warned about
(extra frames or pages, Pillow warnings) is in `DecodedImage.notes`, for the run's report.
The policy follows the measurements in shared/notes/reliability.md, section 1 (Pillow 13).
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps, UnidentifiedImageError

from formats.files import Refused, open_regular

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})
MAX_PIXELS = 120_000_000  # default decompression-bomb cap (read_image's max_pixels); an 8000x6000 photo (48 MP) passes
MAX_BYTES = 1 << 30  # file-size cap, checked with lstat before anything is opened
# Only the decoders we need: most Pillow CVEs are in decoders for formats nobody feeds a denoiser.
# GIF: a common scan format (palette).
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")
_ALPHA_FORMATS = ("PNG", "TIFF", "WEBP", "GIF")  # JPEG and BMP have no alpha channel; GIF: one transparent entry
DEFAULT_JPEG_QUALITY = 95  # when the input's quantisation tables are not readable
DEFAULT_WEBP_QUALITY = 90  # lossy WebP: Pillow does not expose the input's quantiser, so a fixed, high quality
# IJG's (libjpeg) luminance quantisation table at quality 50, natural order (ITU T.81, Annex K, table K.1).
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                      14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                      92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)
_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N")
_WARNINGS_LOCK = threading.Lock()  # see read_image


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
    format: str  # Pillow format name: "PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF"
    bit_depth: int  # 8 or 16 bits per channel in the source
    icc_profile: bytes | None
    # What encode_image needs to write the output like the input (all optional: a bare DecodedImage(pixels,
    # None, "PNG", 8, None) writes a plain file).
    exif: bytes | None = None  # EXIF block ("Exif\0\0" + TIFF structure), Orientation removed: pixels are upright
    dpi: tuple[float, float] | None = None
    text: tuple[tuple[str, str], ...] = ()  # PNG tEXt / zTXt / iTXt chunks, (key, value) in file order
    mode: str = ""  # the file's Pillow mode ("P", "CMYK", "L", ...): "P" and "CMYK" are written back as such
    palette: bytes | None = None  # mode "P": the palette, RGB triplets
    transparency: int | bytes | None = None  # mode "P": transparent index, or one alpha byte per entry (PNG tRNS)
    quality: int | None = None  # JPEG: IJG quality estimated from the luminance quantisation table
    subsampling: int | None = None  # JPEG chroma subsampling, Pillow's code (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0)
    lossy: bool = False  # WebP: VP8 (lossy) rather than VP8L (lossless)
    notes: tuple[str, ...] = ()  # for the report: extra frames or pages left out, Pillow warnings


def find_images(folder: Path, left_out: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Image files under `folder` by suffix, sorted. Hidden entries (".aeflow/", "._x.png") are skipped
    and directory links are not followed (a `loop -> .` link would otherwise recurse 40 levels); each
    such link is appended to `left_out` as (path, reason), for the report."""

    def fail(e: OSError):  # os.walk silently skips unreadable folders by default: inputs must not vanish
        raise e

    found = []
    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if left_out is not None:
            left_out += [(Path(root, d), "folder link, not followed (it may lead outside the input folder "
                                         "or loop); link the files or copy the folder in")
                         for d in dirs if os.path.islink(os.path.join(root, d))]
        found += [Path(root, f) for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def read_image(path: Path, max_pixels: int = MAX_PIXELS, integers_above: int | None = None) -> DecodedImage:
    """Decode one file fully, or raise BadImage saying what is wrong with it.

    max_pixels: refuse larger images from the header alone, before any pixel is decoded (a 12 KB PNG can
    claim 100 MP). integers_above: an image without alpha of more pixels than this keeps its integer
    samples (`pixels` uint8 or uint16, one copy; an uncompressed TIFF is memory-mapped, not read), for
    `map_bands` to convert band by band: 4-8x less memory than float32 for huge scans."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by someone else in this process: truncation would pass silently
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; read_image refuses to run with it")
    try:
        fh = open_regular(path)
    except Refused as e:
        raise BadImage(path, str(e)) from None
    try:
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise BadImage(path, "empty file")
            if size > MAX_BYTES:
                raise BadImage(path, f"{size} bytes exceeds the {MAX_BYTES} byte limit")
            # Pillow's warnings (corrupt EXIF, odd TIFF tags...) would go to stderr, unseen in a batch:
            # they become notes of the image, for the report. catch_warnings swaps process-wide state, so
            # two threads inside it at once could leave warnings recorded into a dead list for good: one
            # decode at a time holds it (decoding is a small part of a denoise; another thread's warning
            # in this window may still land here, as a note).
            with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # Pillow warns above 89 MP; the size check in _decode decides. Palette + alpha bytes are
                # converted to RGBA on purpose (Pillow's advice in that warning).
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                warnings.filterwarnings("ignore", "Palette images with Transparency")
                decoded = _decode(path, fh, max_pixels, integers_above)
    except BadImage:
        raise
    except Exception as e:  # per-file boundary: Pillow raises OSError, SyntaxError, ValueError, TypeError...
        raise BadImage(path, _reason(e, max_pixels)) from e
    said = dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())[:200]}" for w in caught)
    return replace(decoded, notes=decoded.notes + tuple(said)) if said else decoded


def _decode(path, fh, max_pixels: int, integers_above: int | None) -> DecodedImage:
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels >= 2 * Image.MAX_IMAGE_PIXELS:
        # Pillow refuses above 2 x its own MAX_IMAGE_PIXELS (179 MP) at open; our check below is the cap,
        # so Pillow's is raised for a larger --max-pixels (never lowered: other threads may rely on it).
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1
    im = Image.open(fh, formats=FORMATS)
    w, h = im.size
    if w * h > max_pixels:  # from the header, before any pixel is decoded (milliseconds)
        raise BadImage(path, f"{w}x{h} = {_mp(w * h)} exceeds the {_mp(max_pixels)} limit (--max-pixels)")
    fmt = "JPEG" if im.format == "MPO" else im.format  # MPO = a JPEG with extra frames (phone cameras)
    icc = im.info.get("icc_profile") or None
    frames = getattr(im, "n_frames", 1)
    if fmt == "PNG":
        # Pillow's load() skips the IDAT checksums; verify() checks every chunk's CRC. A verified
        # object cannot be loaded, so reopen (and never reuse an object whose load failed).
        im.verify()
        fh.seek(0)
        im = Image.open(fh, formats=FORMATS)
    rawmode, key, mode = _rawmode(im), im.info.get("transparency"), im.mode
    lossy = fmt == "WEBP" and _webp_is_lossy(fh)
    mapped = _memmap_tiff(fh, im) if integers_above is not None and w * h > integers_above and fmt == "TIFF" \
        else None
    info = im.info  # (not loaded: the chunks before the pixel data)
    text = {k: v for k, v in info.items() if isinstance(v, str)}  # Pillow keeps PNG text chunks as str values
    if mapped is not None:
        x = mapped  # uncompressed TIFF: pages come from the file as the bands are read
    elif im.mode in ("RGB", "RGBA") and ";16" in rawmode:
        x = _decode_16bit_colour(path, fh, rawmode)  # Pillow would keep only the high byte of each sample
    else:
        im.load()  # full decode now: truncated or corrupt data raises here, not later
        upright = _upright(im)
        x = _to_array(path, upright)
        info = upright.info
        text = im.text if fmt == "PNG" else {}  # PNG: with the chunks after IDAT
        del upright
    if key is not None and im.mode not in ("P", "PA") and x.shape[-1] in (1, 3):
        # PNG tRNS on grey or RGB: one colour means transparent. Pillow keeps 2- and 4-bit grey keys
        # in the file's units, so they are scaled like the pixels were.
        key = np.asarray(key) * {"L;2": 85, "L;4": 17}.get(rawmode, 1)
        opaque = (x != key.astype(x.dtype)).any(-1, keepdims=True)
        x = np.concatenate([x, opaque * np.iinfo(x.dtype).max], -1).astype(x.dtype)
    notes = ()
    if frames > 1:
        notes = (f"{frames} pages: only page 1 was denoised, pages 2-{frames} are not in the output",) \
            if fmt == "TIFF" else (f"{frames} frames (animated or multi-picture): only the first was denoised; "
                                   "the output is a still image",)
    dpi = info.get("dpi")
    meta = dict(
        exif=_exif_bytes(info.get("exif")), mode=mode, lossy=lossy, notes=notes,
        dpi=(float(dpi[0]), float(dpi[1])) if dpi and min(dpi) > 0 else None,
        text=tuple((str(k), str(v)) for k, v in text.items() if isinstance(v, str)) if fmt == "PNG" else (),
    )
    if fmt == "TIFF":
        meta.update(exif=_tiff_exif(im))
    if mode == "P":
        meta.update(palette=bytes(im.getpalette("RGB") or b""), transparency=key)
    if fmt == "JPEG":
        meta.update(quality=_jpeg_quality(im), subsampling=_jpeg_subsampling(im))
    return _split(x, fmt, icc, integers_above, **meta)


def _upright(im: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF Orientation applied, and the tag removed from info["exif"]
    (written back, a stale tag would turn the upright output once more). No copy when upright."""
    if im.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)  # description, make, model, software, date, artist, copyright


def _tiff_exif(im: Image.Image) -> bytes | None:
    """A TIFF's descriptive tags (scanner make and model, date, artist...) as an EXIF block: its other tags
    describe the file's layout and must not be copied (Pillow writes no Exif sub-IFD to TIFF either)."""
    tags = im.getexif()
    keep = Image.Exif()
    for t in _TIFF_TEXT_TAGS:
        if isinstance(tags.get(t), str) and tags[t]:
            keep[t] = tags[t]
    return keep.tobytes() if len(keep) else None


def _exif_bytes(exif: bytes | None) -> bytes | None:
    """EXIF as Pillow's writers take it: bytes starting with "Exif\0\0" (WebP stores it without), with no
    Orientation other than 1 (the pixels were turned upright; 16-bit colour PNGs are read without Pillow's
    exif_transpose removing it)."""
    if not exif:
        return None
    exif = exif if exif.startswith(b"Exif\0\0") else b"Exif\0\0" + exif
    tags = Image.Exif()
    tags.load(exif)
    if tags.get(0x0112, 1) != 1:
        del tags[0x0112]
        exif = tags.tobytes()  # keeps the Exif and GPS sub-IFDs
    return exif


def _jpeg_quality(im: Image.Image) -> int | None:
    """The IJG quality (1-100) whose luminance table is nearest the file's (cameras use their own
    tables: the nearest IJG quality gives about the same file size)."""
    table = getattr(im, "quantization", None) or {}
    actual = np.asarray(table.get(0, ()), np.float64)
    if actual.size != 64:
        return None
    q = np.arange(1, 101)
    scale = np.where(q < 50, 5000 / q, 200 - 2 * q)  # libjpeg's jpeg_quality_scaling
    ijg = np.clip((_IJG_LUMA[None] * scale[:, None] + 50) // 100, 1, 255)  # (100, 64)
    return int(q[np.abs(ijg - actual).sum(1).argmin()])


def _jpeg_subsampling(im: Image.Image) -> int | None:
    from PIL import JpegImagePlugin

    s = JpegImagePlugin.get_sampling(im)  # -1 for grey or CMYK
    return s if s >= 0 else None


def _webp_is_lossy(fh) -> bool:
    """Whether the WebP's (first) bitstream is VP8 (lossy) or VP8L (lossless): RIFF chunks, WebP container
    spec (developers.google.com/speed/webp/docs/riff_container)."""
    fh.seek(12)  # "RIFF", size, "WEBP"
    for _ in range(64):
        head = fh.read(8)
        if len(head) < 8:
            return False
        fourcc, size = head[:4], struct.unpack("<I", head[4:])[0]
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc == b"VP8 "
        if fourcc == b"ANMF":  # animation frame: 16 bytes of frame header, then the frame's own chunks
            fh.seek(16, 1)
            continue
        fh.seek(size + (size & 1), 1)
    return False


def _memmap_tiff(fh, im: Image.Image) -> np.ndarray | None:
    """(H, W, C) read-only memory map of an uncompressed, upright, single-strip-run grey or RGB TIFF
    (8 or 16 bits), or None when the file is not laid out so (compressed, tiled, planar, alpha, ...)."""
    import tifffile

    try:
        fh.seek(0)
        tif = tifffile.TiffFile(fh, name="input.tif")  # our O_NOFOLLOW descriptor, not the name reopened
        page = tif.pages.first
        if not (page.is_memmappable and page.compression == 1 and page.tags.valueof(274, 1) == 1
                and page.photometric in (1, 2) and page.dtype in (np.uint8, np.uint16)
                and (page.samplesperpixel, page.photometric) in ((1, 1), (3, 2)) and page.planarconfig in (1,)
                and im.mode in ("L", "RGB", "I;16", "I;16B", "I;16L")):
            return None
        shape = (page.imagelength, page.imagewidth, page.samplesperpixel)
        dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
        return np.memmap(fh, dtype=dtype, mode="r", offset=page.dataoffsets[0], shape=shape)
    except Exception:  # not mappable after all: decode with Pillow
        return None


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


def _split(x: np.ndarray, fmt: str, icc: bytes | None, integers_above: int | None = None, **meta) -> DecodedImage:
    """(H, W, C [+ alpha]) integers -> floats in [0, 1], alpha composited on white (or, above
    `integers_above` pixels and without alpha, the integers themselves)."""
    if integers_above is not None and x.shape[0] * x.shape[1] > integers_above and x.shape[-1] in (1, 3):
        return DecodedImage(x, None, fmt, 8 * x.itemsize, icc, **meta)
    scale = np.float32(np.iinfo(x.dtype).max)  # 255 or 65535: scaled, never clipped
    f = x.astype(np.float32)
    f /= scale  # in place: one float copy of a possibly 48 MP image, not two
    alpha = None
    if f.shape[-1] in (2, 4):
        f, alpha = f[..., :-1], f[..., -1]
        f = f * alpha[..., None] + (1 - alpha[..., None])  # white shows, not colour hidden under alpha = 0
    return DecodedImage(np.ascontiguousarray(f), alpha, fmt, 8 * x.itemsize, icc, **meta)


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} MP" if pixels >= 10_000_000 else f"{pixels / 1e6:.2g} MP"


def _reason(e: Exception, max_pixels: int = MAX_PIXELS) -> str:
    """One line saying what is wrong, from whatever Pillow raised."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image (unrecognised format; PNG, JPEG, TIFF, BMP, WebP and GIF are read)"
    if isinstance(e, Image.DecompressionBombError):  # Pillow's own check, above 2 x MAX_IMAGE_PIXELS
        size = re.search(r"\((\d+) pixels\)", str(e))              # Pillow names the image's own size
        what = _mp(int(size.group(1))) if size else f"over {_mp(2 * (Image.MAX_IMAGE_PIXELS or 0))}"
        return f"image of {what} exceeds the {_mp(max_pixels)} limit (decompression bomb; --max-pixels)"
    msg = " ".join(str(e).split())[:160]
    if "truncated" in msg.lower():
        return "truncated image"
    return f"corrupt or unsupported data ({type(e).__name__}: {msg})" if msg else \
        f"corrupt or unsupported data ({type(e).__name__})"


def read_thumbnail(path: Path, size: int = 512, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """float32 (h, w, C) in [0, 1], a strided copy of the image no larger than `size` px: decoded once as
    integers, never as a whole float copy (contact sheets of 100 MP scans). Raises BadImage like read_image."""
    x = read_image(path, max_pixels, integers_above=0).pixels
    step = max(1, -(-max(x.shape[:2]) // size))
    t = x[::step, ::step]
    return np.ascontiguousarray(t) if t.dtype.kind == "f" else t.astype(np.float32) / np.float32(np.iinfo(t.dtype).max)


def map_bands(x: np.ndarray, fn, rows: int = 448, margin: int = 32) -> np.ndarray:
    """Apply `fn` to an image held as integers (H, W, C) uint8 / uint16 (read_image's `integers_above`; a
    memory map is fine) one band of rows at a time, and return the result as integers of the same depth.

    fn takes float32 (h, W, C) in [0, 1], the band plus `margin` rows of context on each side, and returns
    floats of that shape; only the band's own rows are kept, clipped and rounded. Memory follows the band:
    the only whole-image arrays are the integer input and output (a 400 MP RGB scan: 1.2 GB each at 8 bits
    instead of 4.8 GB per float32 copy). Bands all have one height (rows + 2 margin, the last one shifted
    up, as models.inference places its tiles); 448 + 2 x 32 = 512 rows fit one tile row of the denoiser."""
    h = x.shape[0]
    top = np.iinfo(x.dtype).max
    out = np.empty(x.shape, np.uint8 if top == 255 else np.uint16)
    size = min(h, rows + 2 * margin)
    for s in range(0, h, rows):
        e = min(s + rows, h)
        w0 = min(max(0, s - margin), h - size)
        band = x[w0:w0 + size].astype(np.float32)  # (size, W, C): from a memory map, only these rows are read
        band /= np.float32(top)
        y = np.asarray(fn(band))
        if y.shape != band.shape:
            raise ValueError(f"map_bands: fn returned shape {y.shape} for a band of shape {band.shape}")
        out[s:e] = _quantise(y[s - w0:e - w0], top)
    return out


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


def encode_image(pixels: np.ndarray, like: DecodedImage, strip_metadata: bool = False,
                 quality: int | None = None) -> bytes:
    """File bytes of `pixels` (float (H, W, C) in [0, 1], C in {1, 3}, or the integers of an image read with
    `integers_above`) written like `like`: its format, bit depth, alpha, kind and metadata.

    Kind: a palette source is re-quantised to its own palette (same colours, same indices: the nearest entry,
    no dithering), a CMYK JPEG is written as CMYK (naive conversion, as it was read), lossy WebP stays lossy.
    JPEG: `quality`, else the quality estimated from the input's quantisation tables (else 95), with the
    input's chroma subsampling; lossy WebP: `quality`, else 90.
    Metadata: EXIF (without Orientation: pixels are upright), DPI and PNG text are kept unless
    `strip_metadata`; the ICC profile is always kept when it matches the output's colour space (it says
    what the pixel values mean: without it a wide-gamut photo shows wrong colours)."""
    x = np.asarray(pixels)
    if x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got shape {x.shape}")
    sixteen = like.bit_depth == 16 and like.format in ("PNG", "TIFF")
    top = 65535 if sixteen else 255
    alpha = like.alpha is not None and like.format in _ALPHA_FORMATS
    if x.dtype.kind in "ui" and (alpha or np.iinfo(x.dtype).max != top):
        x = x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)  # the general path below
    if alpha:
        if like.alpha.shape != x.shape[:2]:
            raise ValueError(f"pixels are {x.shape[:2]} but the alpha of `like` is {like.alpha.shape}")
        a = like.alpha[..., None]
        # Undo read_image's composite on white, so the stored colour seen through alpha gives `pixels`.
        x = np.where(a > 0, (x.astype(np.float32) - (1 - a)) / np.maximum(a, 1e-12), 1.0)
        x = np.concatenate([x, a], -1)
    q = x if x.dtype.kind == "u" else _quantise(x.astype(np.float32, copy=False), top)  # (H, W, C [+ alpha])
    icc = like.icc_profile
    cmyk = like.mode == "CMYK" and like.format in ("JPEG", "TIFF") and q.shape[-1] == 3
    # An ICC profile describes one colour space; a CMYK source's profile on RGB output would be wrong.
    space = b"CMYK" if cmyk else b"GRAY" if q.shape[-1] in (1, 2) else b"RGB "
    if icc and icc[16:20] != space:
        icc = None
    exif, dpi, text = (None, None, ()) if strip_metadata else (like.exif, like.dpi, like.text)
    if sixteen and like.format == "PNG":
        return _png16(q, icc, dpi, text, exif)  # Pillow writes 16-bit grey only
    if sixteen:
        return _tiff16(q, icc, dpi, exif)
    options = {
        "PNG": {}, "BMP": {}, "GIF": {},
        "JPEG": {"quality": quality or like.quality or DEFAULT_JPEG_QUALITY,
                 "subsampling": 0 if like.subsampling is None else like.subsampling},
        "TIFF": {"compression": "tiff_adobe_deflate"},
        "WEBP": {"quality": quality or DEFAULT_WEBP_QUALITY} if like.lossy else {"lossless": True},
    }[like.format]
    if icc and like.format not in ("BMP", "GIF"):
        options["icc_profile"] = icc
    if exif and like.format in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["exif"] = exif
    if dpi and like.format in ("JPEG", "PNG", "TIFF", "BMP"):
        options["dpi"] = dpi
    if text and like.format == "PNG":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        for key, value in text:
            info.add_text(key, value)  # tEXt when Latin-1 allows, else iTXt (UTF-8)
        options["pnginfo"] = info
    im = Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q)
    del q, x
    if cmyk:
        im = im.convert("CMYK")
    elif like.mode == "P" and like.palette and like.format in ("PNG", "GIF", "BMP", "TIFF") and not sixteen:
        im = _to_palette(im, like)
        if like.transparency is not None and like.format != "BMP":
            options["transparency"] = like.transparency
    buf = io.BytesIO()
    im.save(buf, like.format, **options)
    return buf.getvalue()


def _to_palette(im: Image.Image, like: DecodedImage) -> Image.Image:
    """RGB(A) -> mode P on `like`'s own palette: each opaque pixel takes the nearest opaque entry, each
    (partly) transparent pixel the entry of the nearest alpha (its colour is not seen)."""
    pal = np.frombuffer(like.palette, np.uint8).reshape(-1, 3)
    n = len(pal)
    t = like.transparency
    entry_alpha = np.full(n, 255, np.int32)  # alpha of each palette entry (PNG tRNS / GIF transparent index)
    if isinstance(t, int) and t < n:
        entry_alpha[t] = 0
    elif isinstance(t, bytes):
        entry_alpha[:len(t)] = np.frombuffer(t, np.uint8)[:n]
    opaque = np.flatnonzero(entry_alpha == 255)
    rgb = im.convert("RGB") if im.mode != "RGB" else im
    if len(opaque) == 0:
        opaque = np.arange(n)
    ref = Image.new("P", (1, 1))
    ref.putpalette(pal[opaque].tobytes())
    out = np.asarray(opaque, np.uint8)[np.asarray(rgb.quantize(palette=ref, dither=Image.Dither.NONE))]
    if im.mode in ("RGBA", "LA"):
        a = np.asarray(im.getchannel("A"))
        lut = np.abs(np.arange(256)[:, None] - entry_alpha[None]).argmin(1).astype(np.uint8)  # alpha -> entry
        out = np.where(a < 255, lut[a], out)
    p = Image.fromarray(out, "P")
    p.putpalette(like.palette)
    return p


def _png16(q: np.ndarray, icc: bytes | None, dpi: tuple[float, float] | None = None,
           text: tuple[tuple[str, str], ...] = (), exif: bytes | None = None) -> bytes:
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
    if exif:  # eXIf holds the TIFF structure without the "Exif\0\0" of JPEG's APP1
        chunks.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    if dpi:  # pHYs: pixels per metre, unit 1 (metre)
        chunks.append((b"pHYs", struct.pack(">IIB", round(dpi[0] / 0.0254), round(dpi[1] / 0.0254), 1)))
    for key, value in text:
        try:
            chunks.append((b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:  # iTXt: key, NUL, no compression, method, no language, no translated key
            chunks.append((b"iTXt", key.encode("utf-8") + b"\0\0\0\0\0" + value.encode("utf-8")))
    chunks += [(b"IDAT", zlib.compress(idat.tobytes(), 6)), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)


def _tiff16(q: np.ndarray, icc: bytes | None, dpi: tuple[float, float] | None = None,
            exif: bytes | None = None) -> bytes:
    import tifffile  # only 16-bit TIFF output needs it (Pillow cannot write 16-bit colour)

    c = q.shape[-1]
    buf = io.BytesIO()
    tifffile.imwrite(
        buf, q[..., 0] if c == 1 else q, photometric="minisblack" if c <= 2 else "rgb",
        planarconfig="contig" if c > 1 else None, extrasamples=["unassalpha"] if c in (2, 4) else None,
        compression="zlib", predictor=True,  # horizontal differencing: much smaller on smooth images
        iccprofile=icc, metadata=None,  # metadata=None: no tifffile JSON description
        resolution=dpi, resolutionunit="INCH" if dpi else None, software=None,
        extratags=_ascii_tags(exif))
    return buf.getvalue()


def _ascii_tags(exif: bytes | None) -> list[tuple]:
    """tifffile extratags for the descriptive ASCII tags of an EXIF block (see _tiff_exif)."""
    if not exif:
        return []
    tags = Image.Exif()
    tags.load(exif)
    return [(t, "s", 0, tags[t], True) for t in _TIFF_TEXT_TAGS if isinstance(tags.get(t), str)]


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
