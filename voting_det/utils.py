"""Small helpers shared by the data tools."""
import contextlib
import os
import shutil
import tempfile
from typing import Iterator

__all__ = ["staged_folder"]


@contextlib.contextmanager
def staged_folder(out: str) -> Iterator[str]:
    """Write a folder all at once: yields a fresh staging folder next to ``out``;
    when the block succeeds it takes the place of ``out`` (an existing ``out`` is
    swapped out and removed only then), when it fails it is removed, so a crash
    never leaves a half-written ``out``. The caller decides beforehand whether
    ``out`` may be replaced."""
    out = os.path.abspath(out)
    parent, name = os.path.dirname(out), os.path.basename(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.writing-", dir=parent)
    try:
        yield staging
        if os.path.isdir(out):
            retired = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
            os.rename(out, os.path.join(retired, "old"))
            os.rename(staging, out)
            shutil.rmtree(retired)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
