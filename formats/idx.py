"""MNIST's IDX files (LeCun et al.; http://yann.lecun.com/exdb/mnist/): a big-endian header, then uint8 data.

Header: two zero bytes, a type code (0x08: unsigned byte), the number of dimensions, then one big-endian
uint32 per dimension: MNIST's images start 0x00000803 (count, rows, columns), its labels 0x00000801 (count).
`.gz` files are read and written compressed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

UBYTE = 0x08


class BadIDX(ValueError):
    """An IDX file that cannot be read: the message names the file and the problem."""


def _open(path: Path, mode: str):
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file of unsigned bytes -> uint8 array of the shape its header gives ((N, rows, cols) or (N,))."""
    path = Path(path)
    try:
        with _open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:            # gzip: a cut file raises EOFError, a non-gzip one OSError
        raise BadIDX(f"{path}: not readable as IDX ({e})") from None
    if len(data) < 4:
        raise BadIDX(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != UBYTE or not 1 <= ndim <= 4:
        raise BadIDX(f"{path}: magic 0x{data[:4].hex()} is not an IDX file of unsigned bytes "
                     "(MNIST's are 0x00000803 for images, 0x00000801 for labels)")
    if len(data) < 4 + 4 * ndim:
        raise BadIDX(f"{path}: header cut short ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    need = int(np.prod(shape))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if len(body) != need:
        raise BadIDX(f"{path}: truncated or padded: the header says {' x '.join(map(str, shape))} = {need} values, "
                     f"the file holds {len(body)}")
    return body.reshape(shape).copy()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """The inverse of read_idx (uint8 arrays of 1 to 4 dimensions)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 4:
        raise ValueError(f"IDX holds uint8 arrays of 1-4 dimensions, got {array.dtype} {array.shape}")
    with _open(Path(path), "wb") as f:
        f.write(struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array).tobytes())
