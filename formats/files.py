"""Opening what a user's folder holds: the one way the readers in formats/ open an input file."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO


class Refused(Exception):
    """Why a path is not read (one line): missing, unreadable, or not a regular file."""


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device"


def open_regular(path) -> BinaryIO:
    """A regular file opened for reading, or Refused. A link is refused, not followed (it may point out of the
    input folder, and an error could quote what it points to); a FIFO would block a reader forever."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Refused("cannot stat: no such file") from None
    except OSError as e:
        raise Refused(f"cannot stat ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"not a regular file ({file_kind(st.st_mode)})")
    try:
        # O_NOFOLLOW | O_NONBLOCK: swapped for a link or a FIFO since lstat -> fail, never follow or hang
        fh = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
    except OSError as e:
        raise Refused(f"unreadable ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise Refused("not a regular file (changed while opening)")
    return fh
