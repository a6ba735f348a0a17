"""Read a small local file the operator names (hosts files, key files, the token file) safely.

A path can name anything: a symlink to /dev/zero would be read until memory runs out, a FIFO blocks
the reader forever, a 50 MB file takes a minute to parse before it is refused. So the file's type
and size are checked with stat() before it is opened, and again on the open descriptor (the path
may have been swapped in between); the read itself never takes more than the limit.

Symlinks are followed: the operator may keep hosts files or keys elsewhere and link them. What is
checked is the file the link leads to, so a link to a device or a FIFO is refused like one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotSmallFile(ValueError):
    """Why a path is not a small regular file; the message is the operator's, without the contents."""

    def __init__(self, why: str, *, too_big: bool = False) -> None:
        super().__init__(why)
        self.too_big = too_big


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise NotSmallFile(f"{_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise NotSmallFile(f"{st.st_size} bytes, more than the {limit} bytes such a file can need", too_big=True)


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most limit bytes. NotSmallFile says why not; OSError
    (FileNotFoundError, PermissionError) passes through for the caller to word."""
    _check(os.stat(path), limit)  # before open: opening a device or a FIFO can itself block or act
    # O_NONBLOCK: a FIFO swapped in after the stat does not block the open; O_NOCTTY: never a terminal.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        _check(os.fstat(fd), limit)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # grew after the stat
        raise NotSmallFile(f"more than the {limit} bytes such a file can need", too_big=True)
    return data
