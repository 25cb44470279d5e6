"""Reading scans for training and evaluation, with one clear error per bad file.

detectron2's ``utils.read_image`` (PIL) saturates 16-bit images when asked for
BGR and fails with library messages on broken files. :func:`read_scan` reads
with OpenCV exactly as ``tools/predict.py`` does (``cv2.IMREAD_COLOR``: grey,
palette and RGBA images become 3-channel BGR, alpha is dropped, 16-bit samples
are scaled to 8 bits by dropping the low byte), so a model sees the same pixels
in training, evaluation and batch prediction.
"""
import os

import cv2
import numpy as np

__all__ = ["ImageReadError", "read_scan"]


class ImageReadError(ValueError):
    """A data set entry's image cannot be used."""


def read_scan(path: str, image_format: str = "BGR", where: str = "") -> np.ndarray:
    """The image at ``path`` as HxWx3 uint8 in ``image_format`` ("BGR" or "RGB";
    "L" gives HxWx1). ``where`` names the data set entry in error messages."""
    at = f" ({where})" if where else ""
    if not os.path.exists(path):
        raise ImageReadError(
            f"{path}{at}: no such file. The data set lists an image that is not there: restore it, or convert "
            "the data set again (tools/convert_fetus_framework.py drops rows of missing images with --skip-invalid)"
        )
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}{at}: the file is empty (0 bytes): replace it with the image, or remove the entry")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageReadError(
            f"{path}{at}: not a readable image (truncated, corrupt, or not an image format OpenCV reads): "
            "replace it, or remove its entry from the data set"
        )
    if image_format == "RGB":
        image = image[:, :, ::-1]
    elif image_format == "L":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif image_format != "BGR":
        raise ValueError(f"INPUT.FORMAT must be 'BGR', 'RGB' or 'L' for ultrasound scans, got {image_format!r}")
    return np.ascontiguousarray(image)
