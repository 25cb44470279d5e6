"""Small helpers shared by the data tools."""
import contextlib
import os
import re
import shutil
import tempfile
from typing import Iterator, Tuple

__all__ = ["IMAGE_EXTENSIONS", "natural_key", "staged_folder"]

# File endings read as images by the converter and the predict tool (DICOM:
# voting_det.data.dicom; a DICOM file without these endings is read when named itself).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


def natural_key(path: str) -> Tuple:
    """Sort key ordering digit runs by value: ``2.png`` before ``10.png``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path))


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
