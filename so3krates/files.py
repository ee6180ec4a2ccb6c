"""Writing files so that a killed process never leaves half of one behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write by any means; renamed onto ``path`` when the
    block ends normally, removed when it raises. A killed process leaves the old file or the new
    one, never half of one.

    The file gets the permissions an ordinary ``open(path, "w")`` would give (mkstemp's
    temporaries are private, 0600, which would make shared results unreadable to others).
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)
        os.close(handle)
        yield temporary
        with open(temporary, "rb+") as stream:  # on the disk before the rename makes it the file
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
