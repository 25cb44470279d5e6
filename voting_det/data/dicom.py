"""DICOM scans for :mod:`voting_det.data.image_io` (docs/dicom.md).

:func:`read_scan <voting_det.data.image_io.read_scan>` comes here for a file
named ``*.dcm`` / ``*.dicom`` or holding the ``DICM`` marker at byte 128. Each
frame becomes what the PNG path gives, ``(H, W, 3)`` uint8 BGR:

- MONOCHROME2 as is, MONOCHROME1 inverted; RGB, YBR_FULL and YBR_FULL_422
  converted to RGB by pydicom; PALETTE COLOR through its palette;
- grey samples go through the Modality LUT (Rescale Slope/Intercept), then the
  VOI LUT Sequence or the first Window Center/Width (LINEAR, LINEAR_EXACT,
  SIGMOID) when the file has one; otherwise 8-bit unsigned samples are kept as
  they are and anything else (12-, 16-bit, signed, rescaled) is stretched from
  the frame's minimum to its maximum;
- multi-frame (cine) files: one frame by index (from 0) or every frame.

Compressed transfer syntaxes are decoded by whatever pydicom finds installed
(its own RLE and Deflate, Pillow, pylibjpeg with pylibjpeg-libjpeg /
pylibjpeg-openjpeg); otherwise :class:`ImageReadError` names the file, the
syntax (name and UID) and what to ``pip install``.

The pixel spacing in mm (:func:`dicom_spacing`): the Sequence of Ultrasound
Regions (PhysicalDeltaX/Y in cm, of the 2-D tissue region holding the image
centre, else the largest one), else Pixel Spacing, the Pixel Measures of the
shared functional groups, Imager Pixel Spacing; else unknown, with the reason.
Nothing read from a file that identifies the patient (names, IDs, dates,
institution) is returned, logged or put in an error message.
"""
import logging
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .image_io import ImageReadError

logger = logging.getLogger(__name__)

__all__ = [
    "DICOM_SUFFIXES",
    "dicom_frames",
    "dicom_spacing",
    "is_dicom",
    "iter_dicom_frames",
    "read_dicom",
]

DICOM_SUFFIXES = (".dcm", ".dicom")
# The DICOM Part 10 marker: "DICM" after a 128-byte preamble.
_PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"
# PhysicalUnitsX/YDirection codes (PS3.3 C.8.5.5.1.15); 3 (cm) is the one a distance can use.
PHYSICAL_UNITS = {0: "none", 1: "percent", 2: "dB", 3: "cm", 4: "seconds", 5: "hertz", 6: "dB/seconds",
                  7: "cm/sec", 8: "cm^2", 9: "cm^2/sec", 10: "cm^3", 11: "cm^3/sec", 12: "degrees"}
UNITS_CM = 3
MM_PER_CM = 10.0
# RegionSpatialFormat of a 2-D (tissue or colour flow) region.
SPATIAL_FORMAT_2D = 1
# x and y spacings further apart than this (relative) are reported as anisotropic.
ANISOTROPY_TOLERANCE = 0.01
# What to install for each family of compressed transfer syntaxes (UID prefixes and UIDs).
_JPEG_PLUGINS = "pylibjpeg pylibjpeg-libjpeg"
_J2K_PLUGINS = "pylibjpeg pylibjpeg-openjpeg"
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _JPEG_PLUGINS,  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _JPEG_PLUGINS,  # JPEG Extended
    "1.2.840.10008.1.2.4.57": _JPEG_PLUGINS,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _JPEG_PLUGINS,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _JPEG_PLUGINS,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _JPEG_PLUGINS,  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": _J2K_PLUGINS,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _J2K_PLUGINS,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _J2K_PLUGINS,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _J2K_PLUGINS,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _J2K_PLUGINS,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom decodes it itself too)
}
_ANY_PLUGINS = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"


def is_dicom(path: str) -> bool:
    """``path`` ends in .dcm / .dicom or starts like a DICOM Part 10 file (a
    common picture suffix is taken at its word: no read)."""
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    if path.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(_PREAMBLE_LENGTH + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE_LENGTH:] == _MAGIC


def _pydicom(path: str, at: str):
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"{path}{at}: a DICOM file, and pydicom is not installed; install it "
                             "(.venv/bin/python -m pip install pydicom, or rerun tools/install.sh)",
                             reason="DICOM file and pydicom is not installed (pip install pydicom)") from None
    return pydicom


def _open(path: str, at: str, header_only: bool = False):
    """The dataset of ``path``; ImageReadError when it is not a readable DICOM
    image. ``header_only``: without the pixel data (its presence is still checked)."""
    pydicom = _pydicom(path, at)
    from pydicom.errors import InvalidDicomError

    # pydicom warns about what it had to skip or guess: kept for the error message, else logged (debug)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=header_only)
            except InvalidDicomError:
                if not path.lower().endswith(DICOM_SUFFIXES):
                    raise
                # a .dcm without the preamble: read it as a bare data set, then check that it is one
                ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
                if "SOPClassUID" not in ds and "Rows" not in ds:
                    raise InvalidDicomError("no DICOM header")
        except Exception as e:  # pydicom raises many types for broken files
            raise ImageReadError(
                f"{path}{at}: not a readable DICOM file ({type(e).__name__}: {' '.join(str(e).split())}); "
                "replace it (export it again from the scanner or PACS), or remove it from the input",
                reason="not a readable DICOM file (truncated or corrupt)",
            ) from None
    noted = "; ".join(dict.fromkeys(" ".join(str(w.message).replace(path, "the file").split()) for w in caught))
    for w in caught:
        logger.debug("%s: pydicom: %s", path, w.message)
    if "Rows" not in ds or "Columns" not in ds:
        why = f"pydicom: {noted}" if noted else "e.g. a report"
        raise ImageReadError(f"{path}{at}: a DICOM file without an image (no Rows/Columns; {why}): the file is "
                             "truncated, or not an image; replace it, or remove it from the input",
                             reason="DICOM file without an image (truncated, or not an image)")
    if not header_only and not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(f"{path}{at}: a DICOM file without pixel data (truncated, or not an image); "
                             "replace it, or remove it from the input", reason="DICOM file without pixel data")
    return ds


def _syntax(ds):
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:  # a bare data set (no file meta): its encoding as read
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if meta is None:
            from pydicom.dataset import FileMetaDataset

            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid
    return UID(str(uid))


def _check_decodable(ds, path: str, at: str) -> None:
    """A compressed transfer syntax needs an installed decoder: else one clear error."""
    uid = _syntax(ds)
    if not uid.is_compressed:
        return
    from pydicom.pixels import get_decoder

    what = f"its pixel data is compressed as {uid.name} ({uid})"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageReadError(
            f"{path}{at}: {what}, which no Python package decodes (e.g. video syntaxes); export the scan "
            "uncompressed, or as JPEG / JPEG 2000 / RLE, from the scanner or PACS",
            reason=f"DICOM compressed as {uid.name} ({uid}): no decoder exists; export it uncompressed",
        ) from None
    if not decoder.is_available:
        packages = _DECODER_PACKAGES.get(str(uid), _ANY_PLUGINS)
        raise ImageReadError(
            f"{path}{at}: {what}, and no decoder for it is installed; install one "
            f"(.venv/bin/python -m pip install {packages}), or export the scan uncompressed",
            reason=f"DICOM compressed as {uid.name} ({uid}): no decoder installed (pip install {packages})",
        )


def _number_of_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _check_frame(frame: Optional[int], frames: int, path: str, at: str) -> None:
    if frame is not None and not 0 <= frame < frames:
        raise ImageReadError(
            f"{path}{at}: frame {frame} asked for, the file has {frames} frame(s); give a frame from 0 to "
            f"{frames - 1}",
            reason=f"frame {frame} asked for, the file has {frames} frame(s) (0 to {frames - 1})",
        )


# ------------------------------------------------------------------ pixels


def _first(value) -> float:
    """The first of a possibly multi-valued number."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 to the output range [0, 255]."""
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        low, high = center - width / 2, center + width / 2
        out = ((values - center) / width + 0.5) * 255.0
    else:  # LINEAR
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.where(values <= low, 0.0, np.where(values > high, 255.0, out))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _grey_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """Modality LUT, then the VOI LUT / window, else as is (8-bit) or min-max."""
    from pydicom.pixels import apply_modality_lut
    from pydicom.pixels.processing import apply_voi

    rescaled = "ModalityLUTSequence" in ds or (
        ("RescaleSlope" in ds and _first(ds.RescaleSlope) != 1)
        or ("RescaleIntercept" in ds and _first(ds.RescaleIntercept) != 0)
    )
    values = apply_modality_lut(arr, ds) if rescaled else arr
    if ds.get("VOILUTSequence"):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return _to_uint8(apply_voi(values, ds).astype(np.float64) * 255.0 / (2 ** depth - 1))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if width > (1 if function == "LINEAR" else 0):
            return _to_uint8(_window(values.astype(np.float64), center, width, function))
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if not rescaled and bits <= 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0 and arr.dtype.kind == "u":
        return arr.astype(np.uint8)
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return _to_uint8((values - low) * (255.0 / (high - low)))


def _frame_to_bgr(arr: np.ndarray, ds) -> np.ndarray:
    """One decoded frame (pydicom's output, colour already RGB) as (H, W, 3) uint8 BGR."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if arr.ndim == 3 and arr.shape[2] == 3:
        if arr.dtype == np.uint8 and bits <= 8:
            rgb = arr
        else:
            rgb = _to_uint8(arr.astype(np.float64) * 255.0 / (2 ** bits - 1))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if arr.ndim != 2:
        raise ValueError(f"unexpected decoded frame of shape {arr.shape}")
    grey = _grey_to_uint8(arr, ds)
    if photometric == "MONOCHROME1":  # the lowest value is white
        grey = 255 - grey
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


# ------------------------------------------------------------------ spacing


def _region_bounds(region) -> Optional[Tuple[float, float, float, float]]:
    keys = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
    if not all(k in region and region.get(k) is not None for k in keys):
        return None
    return tuple(float(region.get(k)) for k in keys)


def _area(bounds) -> float:
    return 0.0 if bounds is None else max(0.0, bounds[2] - bounds[0] + 1) * max(0.0, bounds[3] - bounds[1] + 1)


def _unit_name(code) -> str:
    return f"{PHYSICAL_UNITS.get(code, 'unknown')} (code {code})"


def _ultrasound_region_spacing(ds) -> Tuple[Optional[Tuple[float, float]], str, str]:
    """``((dx, dy) in mm or None, source, note)`` from the Sequence of Ultrasound Regions."""
    regions = list(ds.get("SequenceOfUltrasoundRegions") or [])
    if not regions:
        return None, "", "no Sequence of Ultrasound Regions"
    tissue = [(i, r) for i, r in enumerate(regions) if r.get("RegionSpatialFormat") == SPATIAL_FORMAT_2D]
    if not tissue:
        return None, "", (f"none of its {len(regions)} ultrasound region(s) is a 2-D image region "
                          "(RegionSpatialFormat 1)")
    cx, cy = int(ds.Columns) / 2, int(ds.Rows) / 2

    def holds_centre(region) -> bool:
        b = _region_bounds(region)
        return b is not None and b[0] <= cx <= b[2] + 1 and b[1] <= cy <= b[3] + 1

    centre = [(i, r) for i, r in tissue if holds_centre(r)]
    # the largest of those holding the centre, else the largest (the first of equals)
    i, region = max(centre or tissue, key=lambda item: (_area(_region_bounds(item[1])), -item[0]))
    which = f"ultrasound region {i} ({'holds the image centre' if centre else 'largest 2-D region'})"
    ux, uy = region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection")
    if ux != UNITS_CM or uy != UNITS_CM:
        return None, "", f"{which}: physical units x {_unit_name(ux)}, y {_unit_name(uy)}, not cm"
    dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
    if dx is None or dy is None or not (abs(float(dx)) > 0 and abs(float(dy)) > 0):
        return None, "", f"{which}: PhysicalDeltaX/Y missing or zero"
    return (abs(float(dx)) * MM_PER_CM, abs(float(dy)) * MM_PER_CM), "SequenceOfUltrasoundRegions", \
        f"{which}: PhysicalDeltaX/Y in cm x 10"


def _pair_spacing(value) -> Optional[Tuple[float, float]]:
    """(dx, dy) in mm of a (row, column) spacing in mm, if valid."""
    try:
        row, column = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return None
    return (column, row) if row > 0 and column > 0 else None


def dicom_spacing(ds) -> Dict[str, object]:
    """The pixel spacing of a dataset: ``pixel_spacing_mm`` (the row spacing,
    the one a vertical NT thickness needs; None when unknown),
    ``pixel_spacing_xy_mm`` ((dx, dy) or None), ``spacing_source`` (the DICOM
    attribute it came from, or None) and ``spacing_note`` (how it was chosen,
    or why it is unknown)."""
    xy, source, note = _ultrasound_region_spacing(ds)
    notes = [note]
    if xy is None:
        shared = ds.get("SharedFunctionalGroupsSequence") or []
        measures = (shared[0].get("PixelMeasuresSequence") or []) if shared else []
        candidates = (("PixelSpacing", ds.get("PixelSpacing")),
                      ("PixelMeasuresSequence", measures[0].get("PixelSpacing") if measures else None),
                      ("ImagerPixelSpacing", ds.get("ImagerPixelSpacing")))
        for name, value in candidates:
            xy = _pair_spacing(value) if value is not None else None
            if xy is not None:
                source = name
                notes.append(f"{name} (mm, row then column)")
                break
        else:
            notes.append("no PixelSpacing or ImagerPixelSpacing")
    if xy is None:
        return {"pixel_spacing_mm": None, "pixel_spacing_xy_mm": None, "spacing_source": None,
                "spacing_note": "unknown: " + "; ".join(notes)}
    dx, dy = xy
    note = "; ".join(notes) if source != "SequenceOfUltrasoundRegions" else note
    if abs(dx - dy) > ANISOTROPY_TOLERANCE * max(dx, dy):
        note += f"; x and y spacings differ ({dx:g} vs {dy:g} mm): the thickness (vertical) uses y"
    return {"pixel_spacing_mm": dy, "pixel_spacing_xy_mm": (dx, dy), "spacing_source": source, "spacing_note": note}


def _info(ds, frame: Optional[int], frames: int) -> Dict[str, object]:
    """What is known about the scan, nothing identifying the patient."""
    uid = _syntax(ds)
    return {
        "format": "dicom",
        "frames": frames,
        "frame": frame if frames > 1 else None,
        **dicom_spacing(ds),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")).strip(),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": f"{uid.name} ({uid})",
    }


# ------------------------------------------------------------------ reading


def dicom_frames(path: str, where: str = "") -> int:
    """Number of frames of a DICOM file (1 for a single-frame one), from its header."""
    at = f" ({where})" if where else ""
    return _number_of_frames(_open(path, at, header_only=True))


def iter_dicom_frames(path: str, frames: Optional[Sequence[int]] = None, where: str = ""
                      ) -> Iterator[Tuple[Optional[int], np.ndarray, Dict[str, object]]]:
    """``(frame, image, info)`` for the ``frames`` of ``path`` (indices from 0;
    None: every frame), the file read once. ``frame`` is None for a
    single-frame file; ``image`` (H, W, 3) uint8 BGR; ``info`` as
    :func:`voting_det.data.image_io.read_scan_with_info`."""
    at = f" ({where})" if where else ""
    ds = _open(path, at)
    count = _number_of_frames(ds)
    wanted: List[int] = list(range(count)) if frames is None else [int(f) for f in frames]
    for f in wanted:
        _check_frame(f, count, path, at)
    _check_decodable(ds, path, at)
    from pydicom.pixels import iter_pixels, pixel_array

    uid = _syntax(ds)
    try:
        arrays = iter([pixel_array(ds)]) if count == 1 else iter_pixels(ds, indices=wanted)
        for f in wanted:
            image = _frame_to_bgr(next(arrays), ds)
            yield (f if count > 1 else None), image, _info(ds, f, count)
    except ImageReadError:
        raise
    except Exception as e:  # the decoders raise many types for broken pixel data
        packages = _DECODER_PACKAGES.get(str(uid), _ANY_PLUGINS)
        hint = f" (if it is intact, install {packages})" if uid.is_compressed else ""
        raise ImageReadError(
            f"{path}{at}: its pixel data ({uid.name}) could not be decoded ({type(e).__name__}: "
            f"{' '.join(str(e).split())}); the file is truncated or corrupt{hint}: replace it, or remove it "
            "from the input",
            reason=f"DICOM pixel data ({uid.name}) could not be decoded: truncated or corrupt",
        ) from None


def read_dicom(path: str, frame: Optional[int] = None, where: str = "") -> Tuple[np.ndarray, Dict[str, object]]:
    """One frame of ``path`` (``frame`` from 0; None: the first) as (H, W, 3)
    uint8 BGR, and its info."""
    _, image, info = next(iter_dicom_frames(path, [0 if frame is None else frame], where))
    return image, info

