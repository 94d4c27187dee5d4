"""Files replaced whole: written to a temporary file beside the real path, then renamed over it.

A reader never sees half a file, a failure leaves the old one as it was, a symlink is followed (its target is
replaced, the link stays) and the file keeps its permissions (a new one gets what the umask gives, never mkstemp's
0600). Used for the CLI's results, the checkpoint and its ONNX twin, and train.py's state.
"""

import os
import tempfile
from typing import IO, Callable


def replacement_mode(path: str) -> int:
    """The permissions of a file that replaces `path`: its own, or a new file's."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def replace_file(path: str, write: Callable[[IO[bytes]], None]) -> str:
    """`write(f)` fills a temporary file that then replaces `path` (its target, when a symlink); returns the real
    path written."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(real)}.", suffix=".tmp")
    try:
        os.chmod(temporary, replacement_mode(real))
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temporary, real)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return real
