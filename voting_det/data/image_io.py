"""Reading scans for training, evaluation and prediction, with one clear error per bad file.

detectron2's ``utils.read_image`` (PIL) saturates 16-bit images when asked for
BGR and fails with library messages on broken files. :func:`read_scan` reads
with OpenCV exactly as ``tools/predict.py`` does (``cv2.IMREAD_COLOR``: grey,
palette and RGBA images become 3-channel BGR, alpha is dropped, 16-bit samples
are scaled to 8 bits by dropping the low byte), so a model sees the same pixels
in training, evaluation and batch prediction.

DICOM files (named ``*.dcm`` / ``*.dicom``, or any file with the ``DICM``
marker) are read by :mod:`voting_det.data.dicom` into the same ``(H, W, 3)``
uint8 BGR (one frame of a multi-frame file: the first unless ``frame`` says
which); :func:`read_scan_with_info` also gives their pixel spacing in mm
(docs/dicom.md). This module is the one way the project reads an image file.
"""
import os
from typing import Dict, Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["ImageReadError", "iter_scan_frames", "read_scan", "read_scan_with_info", "scan_frames"]

Info = Dict[str, object]


class ImageReadError(ValueError):
    """A data set entry's image cannot be used. The message names the file and
    what to do; ``reason`` is the same without the path (for a table's error
    column)."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason or message


def _at(where: str) -> str:
    return f" ({where})" if where else ""


def _check_file(path: str, where: str) -> None:
    at = _at(where)
    if not os.path.exists(path):
        raise ImageReadError(
            f"{path}{at}: no such file. The data set lists an image that is not there: restore it, or convert "
            "the data set again (tools/convert_fetus_framework.py drops rows of missing images with --skip-invalid)",
            reason="no such file",
        )
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}{at}: the file is empty (0 bytes): replace it with the image, or remove the entry",
                             reason="empty file (0 bytes)")


def _is_dicom(path: str) -> bool:
    from .dicom import is_dicom

    return is_dicom(path)


def _plain_info() -> Info:
    """The info of an image file that is not DICOM: one frame, no spacing."""
    return {"format": "image", "frames": 1, "frame": None, "pixel_spacing_mm": None, "pixel_spacing_xy_mm": None,
            "spacing_source": None,
            "spacing_note": "unknown: not a DICOM file (give the spacing, e.g. --pixel-spacing)"}


def _read_plain(path: str, where: str, frame: Optional[int]) -> np.ndarray:
    if frame not in (None, 0):
        raise ImageReadError(f"{path}{_at(where)}: frame {frame} asked for, the file is a single image; give frame 0 "
                             "or none", reason=f"frame {frame} asked for, the file is a single image")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageReadError(
            f"{path}{_at(where)}: not a readable image (truncated, corrupt, or not an image format OpenCV reads): "
            "replace it, or remove its entry from the data set",
            reason="not a readable image",
        )
    return image


def _as_format(image: np.ndarray, image_format: str) -> np.ndarray:
    """A BGR image in ``image_format``."""
    if image_format == "RGB":
        image = image[:, :, ::-1]
    elif image_format == "L":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif image_format != "BGR":
        raise ValueError(f"INPUT.FORMAT must be 'BGR', 'RGB' or 'L' for ultrasound scans, got {image_format!r}")
    return np.ascontiguousarray(image)


def read_scan_with_info(path: str, image_format: str = "BGR", where: str = "",
                        frame: Optional[int] = None) -> Tuple[np.ndarray, Info]:
    """:func:`read_scan` and what the file says about the scan: ``format``
    ("dicom" or "image"), ``frames`` (how many the file has), ``frame`` (the
    one read, from 0; None for a single-frame file), ``pixel_spacing_mm`` (mm
    per pixel along y, None when unknown), ``pixel_spacing_xy_mm``,
    ``spacing_source`` (the DICOM attribute, or None) and ``spacing_note`` (how
    it was found, or why it is unknown); DICOM files add
    ``photometric_interpretation``, ``bits_stored`` and ``transfer_syntax``.
    Nothing identifying the patient."""
    _check_file(path, where)
    if _is_dicom(path):
        from .dicom import read_dicom

        image, info = read_dicom(path, frame, where)
    else:
        image, info = _read_plain(path, where, frame), _plain_info()
    return _as_format(image, image_format), info


def read_scan(path: str, image_format: str = "BGR", where: str = "", frame: Optional[int] = None) -> np.ndarray:
    """The image at ``path`` as HxWx3 uint8 in ``image_format`` ("BGR" or "RGB";
    "L" gives HxWx1). ``where`` names the data set entry in error messages.
    ``frame``: of a multi-frame DICOM file, which one (from 0; None: the first)."""
    return read_scan_with_info(path, image_format, where, frame)[0]


def scan_frames(path: str, where: str = "") -> int:
    """How many frames the file holds: a multi-frame DICOM's NumberOfFrames
    (read from its header), else 1 (the file is not decoded)."""
    _check_file(path, where)
    if _is_dicom(path):
        from .dicom import dicom_frames

        return dicom_frames(path, where)
    return 1


def iter_scan_frames(path: str, frames: Optional[Sequence[int]] = None, image_format: str = "BGR",
                     where: str = "") -> Iterator[Tuple[Optional[int], np.ndarray, Info]]:
    """``(frame, image, info)`` for the ``frames`` of ``path`` (from 0; None:
    every frame), the file read once: ``frame`` is None for a single-frame
    file (an image that is not DICOM yields once). See :func:`read_scan_with_info`."""
    _check_file(path, where)
    if _is_dicom(path):
        from .dicom import iter_dicom_frames

        for frame, image, info in iter_dicom_frames(path, frames, where):
            yield frame, _as_format(image, image_format), info
        return
    for frame in [None] if frames is None else frames:
        yield None, _as_format(_read_plain(path, where, frame), image_format), _plain_info()
