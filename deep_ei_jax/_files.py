"""Writing a file whole or not at all (the CLI's outputs, TensorBoard exports)."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path: str, write, *, binary: bool = False, newline=None) -> None:
    """Writes a file whole or not at all: `write(file)` fills a temporary file in the same folder,
    which is then renamed over `path` (an interruption leaves `path` as it was).

    Args:
      path: the file to write.
      write: called with the open temporary file.
      binary: open it in binary mode (else text, with `newline`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb" if binary else "w",
                       **({} if binary else {"newline": newline})) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
