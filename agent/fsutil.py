"""Small file-system helpers shared by the stages that keep files beside the database."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    A reader (or a power cut) sees the old file or the whole new one, never half of it.
    The file is created with ``mode`` (before the umask), so a secret is never readable by
    others, not even for a moment.

    Raises:
        OSError: it cannot be written; the temporary file is removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
