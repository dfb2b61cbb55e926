"""Files written atomically: a temporary file beside the target, fsync, rename.

A reader never sees half a file, and a crash leaves either the old or the new one.
Private keys are created with mode 0600 from the start (never chmod-ed afterwards).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from exchange.errors import InputError

PRIVATE = 0o600
PUBLIC = 0o644


def write_atomic(path: Path, data: bytes, *, mode: int = PUBLIC) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the mode given to open()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_input(path: Path, what: str) -> bytes:
    """Read a user-named file; a missing or unreadable file is an :class:`InputError`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a {what} file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} file ({error.strerror})") from None
