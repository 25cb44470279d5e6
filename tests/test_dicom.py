"""DICOM input (issue 23, "DICOM in"): voting_det.data.dicom through the one
reader (voting_det.data.image_io), the pixel spacing it finds, and
tools/predict.py on DICOM files. Every file is built here with pydicom from
arrays the test holds (never real data); expected pixels and spacings are the
source arrays and hand-computed numbers."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless  # noqa: E402

from voting_det import cli  # noqa: E402
from voting_det.data.image_io import (  # noqa: E402
    ImageReadError,
    iter_scan_frames,
    read_scan,
    read_scan_with_info,
    scan_frames,
)
from voting_det.engine.checkpoint import SafeCheckpointer  # noqa: E402
from voting_det.inference import list_images, predict_images, read_predictions  # noqa: E402

from .helpers import load_tool  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(REPO, "tools", "predict.py")
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
# Identifiers written into every test file; none may reach an output.
PATIENT = {"PatientName": "Doe^Jane^Q", "PatientID": "PID-998877", "PatientBirthDate": "19840229",
           "InstitutionName": "Test Hospital Nowhere", "AccessionNumber": "ACC-5544", "OtherPatientIDs": "OPID-1122"}
H, W = 48, 64


def pattern(h=H, w=W, seed=0):
    """A grey uint8 test image: a gradient, a drawn bright band and dark bar, noise."""
    rng = np.random.default_rng(seed)
    image = (np.arange(w)[None, :] * 3 + np.arange(h)[:, None] * 2).astype(np.int64) % 200
    image[h // 3: h // 3 + 4, 5: w - 5] = 250
    image[5: h - 5, w // 2: w // 2 + 3] = 10
    return np.clip(image + rng.integers(0, 20, (h, w)), 0, 255).astype(np.uint8)


def region(x0, y0, x1, y1, dx, dy, units=3, spatial=1):
    """One item of the Sequence of Ultrasound Regions."""
    r = Dataset()
    r.RegionSpatialFormat = spatial
    r.RegionDataType = 1
    r.RegionFlags = 0
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, y0, x1, y1
    r.PhysicalUnitsXDirection = units
    r.PhysicalUnitsYDirection = units
    r.PhysicalDeltaX = dx
    r.PhysicalDeltaY = dy
    return r


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=None, *, regions=(), compress=None, **elements):
    """A DICOM Part 10 file of ``pixels`` ((rows, cols[, 3]) or (frames, rows, cols[, 3]))."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    colour = pixels.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2")
    frames = pixels.ndim == (4 if colour else 3)
    ds.SOPClassUID = US_MULTIFRAME if frames else US_IMAGE
    ds.Modality = "US"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if regions:
        ds.SequenceOfUltrasoundRegions = list(regions)
    for key, value in elements.items():
        setattr(ds, key, value)
    if compress:
        ds.compress(compress)
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def grey_channels(image):
    """The one grey level of a BGR image whose three channels must be equal."""
    assert image.shape[2] == 3 and image.dtype == np.uint8
    assert (image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all()
    return image[:, :, 0]


# ------------------------------------------------------------------ pixels


def test_monochrome2_8bit_is_the_source_array_as_bgr(tmp_path):
    source = pattern()
    path = write_dicom(tmp_path / "scan.dcm", source)
    image = read_scan(path)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(grey_channels(image), source)
    np.testing.assert_array_equal(read_scan(path, "L")[:, :, 0], source)
    np.testing.assert_array_equal(read_scan(path, "RGB"), image)
    # found by content: a DICOM file without the .dcm ending
    plain = tmp_path / "IM000001"
    plain.write_bytes(open(path, "rb").read())
    np.testing.assert_array_equal(grey_channels(read_scan(str(plain))), source)


def test_monochrome1_is_inverted(tmp_path):
    source = pattern()
    image = read_scan(write_dicom(tmp_path / "m1.dcm", source, "MONOCHROME1"))
    np.testing.assert_array_equal(grey_channels(image), 255 - source)


def test_16bit_without_window_is_stretched_from_min_to_max(tmp_path):
    source = pattern().astype(np.uint16) * 15 + 100  # 12-bit values, 100 at least
    image = read_scan(write_dicom(tmp_path / "s16.dcm", source, bits_stored=12))
    lo, hi = float(source.min()), float(source.max())
    expected = np.rint((source - lo) / (hi - lo) * 255).astype(np.uint8)
    np.testing.assert_array_equal(grey_channels(image), expected)
    assert grey_channels(image).min() == 0 and grey_channels(image).max() == 255


def test_16bit_window_center_width_is_applied(tmp_path):
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), centre 2000, width 1001, by hand:
    # 1000 -> 0, 1750 -> ((1750 - 1999.5) / 1000 + 0.5) * 255 = 63.88 -> 64,
    # 2000 -> 127.63 -> 128, 2250 -> 191.38 -> 191, 3000 -> 255
    values = np.array([1000, 1750, 2000, 2250, 3000], np.uint16)
    source = np.tile(values, (4, 2))  # 4 x 10
    image = read_scan(write_dicom(tmp_path / "win.dcm", source, bits_stored=12, WindowCenter=2000, WindowWidth=1001))
    np.testing.assert_array_equal(grey_channels(image)[0, :5], [0, 64, 128, 191, 255])


def test_rgb_becomes_bgr(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    image = read_scan(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    np.testing.assert_array_equal(image, rgb[:, :, ::-1])


def _ybr_full(rgb):
    """RGB -> YCbCr by the DICOM YBR_FULL equations (PS3.3 C.7.6.3.1.2)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def _smooth_rgb(h=H, w=W):
    """Colours away from the gamut's edges (YCbCr round trips within a grey level or two)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([40 + 3 * xx, 60 + 2 * yy, 200 - 2 * xx], axis=-1).astype(np.uint8)


def test_ybr_full_is_converted_to_rgb(tmp_path):
    rgb = _smooth_rgb()
    image = read_scan(write_dicom(tmp_path / "ybr.dcm", _ybr_full(rgb), "YBR_FULL"))
    assert np.abs(image.astype(int) - rgb[:, :, ::-1].astype(int)).max() <= 2


def test_ybr_full_422_is_converted_to_rgb(tmp_path):
    rgb = _smooth_rgb()
    rgb[:, 1::2] = rgb[:, 0::2]  # pairs of equal colours: the 4:2:2 subsampling loses nothing
    ybr = _ybr_full(rgb)
    # per pair of pixels: Y0 Y1 Cb Cr (PS3.5 8.2.1, uncompressed YBR_FULL_422)
    packed = np.stack([ybr[:, 0::2, 0], ybr[:, 1::2, 0], ybr[:, 0::2, 1], ybr[:, 0::2, 2]], axis=-1)
    path = write_dicom(tmp_path / "ybr422.dcm", rgb, "RGB")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = packed.tobytes()
    ds.save_as(path, enforce_file_format=True)
    image = read_scan(path)
    assert image.shape == (H, W, 3)
    assert np.abs(image.astype(int) - rgb[:, :, ::-1].astype(int)).max() <= 2


def test_multi_frame_one_frame_or_every_frame(tmp_path):
    frames = np.stack([pattern(seed=s) // (s + 1) for s in range(3)])
    path = write_dicom(tmp_path / "cine.dcm", frames)
    assert scan_frames(path) == 3
    np.testing.assert_array_equal(grey_channels(read_scan(path)), frames[0])  # the first by default
    image, info = read_scan_with_info(path, frame=2)
    np.testing.assert_array_equal(grey_channels(image), frames[2])
    assert (info["frames"], info["frame"]) == (3, 2)
    every = list(iter_scan_frames(path))
    assert [f for f, _, _ in every] == [0, 1, 2]
    for f, image, _ in every:
        np.testing.assert_array_equal(grey_channels(image), frames[f])
    assert [f for f, _, _ in iter_scan_frames(path, [1])] == [1]
    with pytest.raises(ImageReadError, match=r"frame 3 asked for, the file has 3 frame\(s\)") as e:
        read_scan(path, frame=3)
    assert path in str(e.value)


def test_single_frame_and_plain_images_have_one_frame(tmp_path):
    path = write_dicom(tmp_path / "one.dcm", pattern())
    assert scan_frames(path) == 1
    assert [f for f, _, _ in iter_scan_frames(path)] == [None]
    assert read_scan_with_info(path)[1]["frame"] is None


# ------------------------------------------------------------------ pixel spacing


def test_spacing_from_the_ultrasound_region_in_cm(tmp_path):
    # 0.012 cm per row, 0.01 cm per column -> 0.12 mm (y, the thickness's axis) and 0.1 mm
    path = write_dicom(tmp_path / "r.dcm", pattern(), regions=[region(0, 0, W - 1, H - 1, 0.01, 0.012)])
    info = read_scan_with_info(path)[1]
    assert info["pixel_spacing_mm"] == pytest.approx(0.12)
    assert info["pixel_spacing_xy_mm"] == pytest.approx((0.1, 0.12))
    assert info["spacing_source"] == "SequenceOfUltrasoundRegions"


def test_the_region_holding_the_image_centre_is_chosen(tmp_path):
    regions = [
        region(0, 0, 20, 15, 0.05, 0.05),  # a large-ish corner region away from the centre (32, 24)
        region(25, 18, 40, 30, 0.02, 0.02),  # holds the centre: 0.2 mm
        region(0, 0, W - 1, H - 1, 0.07, 0.07, spatial=3),  # a spectral (Doppler) region: never a distance
    ]
    info = read_scan_with_info(write_dicom(tmp_path / "c.dcm", pattern(), regions=regions))[1]
    assert info["pixel_spacing_mm"] == pytest.approx(0.2)


def test_else_the_largest_2d_region(tmp_path):
    regions = [region(0, 0, 9, 9, 0.05, 0.05), region(40, 30, 63, 47, 0.03, 0.03), region(0, 40, 5, 47, 0.09, 0.09)]
    info = read_scan_with_info(write_dicom(tmp_path / "l.dcm", pattern(), regions=regions))[1]
    assert info["pixel_spacing_mm"] == pytest.approx(0.3)  # 24 x 18 px, the largest


def test_region_in_other_units_is_not_a_spacing(tmp_path):
    path = write_dicom(tmp_path / "u.dcm", pattern(), regions=[region(0, 0, W - 1, H - 1, 0.01, 0.01, units=4)])
    info = read_scan_with_info(path)[1]
    assert info["pixel_spacing_mm"] is None and info["spacing_source"] is None
    assert "seconds" in info["spacing_note"] and "not cm" in info["spacing_note"]


def test_region_less_file_has_unknown_spacing(tmp_path):
    info = read_scan_with_info(write_dicom(tmp_path / "n.dcm", pattern()))[1]
    assert info["pixel_spacing_mm"] is None and info["pixel_spacing_xy_mm"] is None
    assert info["spacing_note"].startswith("unknown")
    assert read_scan_with_info(str(_png(tmp_path)))[1]["pixel_spacing_mm"] is None


def test_pixel_spacing_is_the_fallback(tmp_path):
    # PixelSpacing is (row, column) in mm
    path = write_dicom(tmp_path / "p.dcm", pattern(), PixelSpacing=[0.2, 0.25])
    info = read_scan_with_info(path)[1]
    assert info["pixel_spacing_mm"] == pytest.approx(0.2)
    assert info["pixel_spacing_xy_mm"] == pytest.approx((0.25, 0.2))
    assert info["spacing_source"] == "PixelSpacing"
    # a region that cannot give a distance falls back to it too
    path = write_dicom(tmp_path / "p2.dcm", pattern(), regions=[region(0, 0, W - 1, H - 1, 1, 1, units=2)],
                       PixelSpacing=[0.15, 0.15])
    assert read_scan_with_info(path)[1]["pixel_spacing_mm"] == pytest.approx(0.15)
    path = write_dicom(tmp_path / "p3.dcm", pattern(), ImagerPixelSpacing=[0.3, 0.3])
    assert read_scan_with_info(path)[1]["pixel_spacing_mm"] == pytest.approx(0.3)


def test_info_holds_nothing_identifying(tmp_path):
    path = write_dicom(tmp_path / "i.dcm", pattern(), regions=[region(0, 0, W - 1, H - 1, 0.01, 0.01)])
    text = repr(read_scan_with_info(path)[1])
    for value in PATIENT.values():
        assert value not in text and value.split("^")[0] not in text


# ------------------------------------------------------------------ compressed, broken


def test_rle_compressed_is_decoded(tmp_path):
    source = pattern()
    path = write_dicom(tmp_path / "rle.dcm", source, compress=RLELossless)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(grey_channels(read_scan(path)), source)
    frames = np.stack([pattern(seed=s) for s in range(2)])
    path = write_dicom(tmp_path / "rle_cine.dcm", frames, compress=RLELossless)
    np.testing.assert_array_equal(grey_channels(read_scan(path, frame=1)), frames[1])


def test_jpeg2000_is_decoded_when_the_plugin_is_installed(tmp_path):
    pytest.importorskip("openjpeg")  # pylibjpeg-openjpeg encodes and decodes it
    source = pattern()
    path = write_dicom(tmp_path / "j2k.dcm", source, compress=JPEG2000Lossless)
    np.testing.assert_array_equal(grey_channels(read_scan(path)), source)


def _with_syntax(path, uid):
    """The file of ``path`` relabelled with a compressed transfer syntax (its
    pixel bytes unchanged, encapsulated as that syntax requires)."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(path, enforce_file_format=True)
    return path


def test_compressed_without_a_decoder_names_the_syntax_and_what_to_install(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    path = _with_syntax(write_dicom(tmp_path / "j2k.dcm", pattern()), JPEG2000Lossless)
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))  # as if no plugin were installed
    with pytest.raises(ImageReadError) as e:
        read_scan(path)
    message = str(e.value)
    assert path in message and "JPEG 2000" in message and "1.2.840.10008.1.2.4.90" in message
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message
    assert "\n" not in message


def test_syntax_nothing_decodes_is_refused_clearly(tmp_path):
    mpeg4 = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile: video, no Python decoder
    path = _with_syntax(write_dicom(tmp_path / "video.dcm", pattern()), mpeg4)
    with pytest.raises(ImageReadError) as e:
        read_scan(path)
    assert path in str(e.value) and mpeg4 in str(e.value) and "MPEG-4" in str(e.value)


def test_broken_files_raise_image_read_error_naming_the_file(tmp_path):
    good = open(write_dicom(tmp_path / "good.dcm", pattern()), "rb").read()
    cases = {
        "truncated.dcm": good[: len(good) - 500],  # pixel data cut short
        "header_only.dcm": good[:200],  # cut inside the header
        "text.dcm": b"this is not a DICOM file at all " * 8,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageReadError) as e:
            read_scan(str(tmp_path / name), where="image_id 4")
        assert str(tmp_path / name) in str(e.value) and "image_id 4" in str(e.value), name
        assert "\n" not in str(e.value)
    ds = pydicom.dcmread(str(tmp_path / "good.dcm"))
    del ds.PixelData
    ds.save_as(str(tmp_path / "no_pixels.dcm"), enforce_file_format=True)
    with pytest.raises(ImageReadError, match="without pixel data"):
        read_scan(str(tmp_path / "no_pixels.dcm"))


# ------------------------------------------------------------------ the converter


def test_converter_finds_and_reads_dicom_images(tmp_path):
    import json

    from voting_det.data.fetus_framework import UNREADABLE_IMAGE, convert_fetus_framework
    from voting_det.data.spreadsheet import write_object_detection_xlsx

    root = tmp_path / "source"
    root.mkdir()
    rows = []
    for i in range(9):  # different images (far-apart pHashes), one with an NT box each
        coarse = np.random.default_rng(i).integers(0, 256, (6, 8)).astype(np.uint8)
        write_dicom(root / f"scan{i}.dcm", np.kron(coarse, np.ones((8, 8), np.uint8)))  # 48 x 64
        rows.append((f"scan{i}.dcm", "NT", 10, 12, 20, 40))
    (root / "broken.dcm").write_bytes(b"not a DICOM file " * 10)
    rows.append(("broken.dcm", "NT", 10, 12, 20, 40))
    write_object_detection_xlsx(str(root / "ObjectDetection.xlsx"), rows)
    convert_fetus_framework(str(root), str(tmp_path / "coco"), folds=3, skip_invalid=True, progress=False)
    coco = json.loads((tmp_path / "coco" / "all.json").read_text())
    assert sorted(os.path.basename(im["file_name"]) for im in coco["images"]) == [f"scan{i}.dcm" for i in range(9)]
    assert {(im["height"], im["width"]) for im in coco["images"]} == {(H, W)}
    report = json.loads((tmp_path / "coco" / "conversion_report.json").read_text())
    assert report["problems_by_kind"][UNREADABLE_IMAGE]["count"] == 1
    assert "Doe" not in json.dumps(coco) + json.dumps(report)


# ------------------------------------------------------------------ prediction


def _png(folder):
    import cv2

    path = folder / "plain.png"
    cv2.imwrite(str(path), pattern())
    return path


class _ScriptedPredictor:
    """One detection whose calipers are 10 px apart; mm from the spacing it is given."""

    def __init__(self):
        self.spacings = []

    def __call__(self, image, pixel_spacing=None):
        from detectron2.structures import Boxes, Instances

        self.spacings.append(pixel_spacing)
        inst = Instances(image.shape[:2])
        inst.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 30.0, 20.0]]))
        inst.scores = torch.tensor([0.9])
        inst.pred_classes = torch.zeros(1, dtype=torch.int64)
        inst.pred_calipers = torch.tensor([[[20.0, 10.0], [20.0, 20.0]]])
        inst.pred_nt_thickness_px = torch.tensor([10.0])
        inst.pred_nt_thickness_mm = torch.tensor([10.0 * pixel_spacing if pixel_spacing else float("nan")])
        inst.pred_nt_above_cutoff = inst.pred_nt_thickness_mm >= 3.5
        return {"instances": inst}


def _dicom_folder(folder):
    """single.dcm (a region of 0.012 cm per row), cine.dcm (3 frames, PixelSpacing 0.2 mm), plain.png."""
    folder.mkdir(parents=True, exist_ok=True)
    write_dicom(folder / "single.dcm", pattern(), regions=[region(0, 0, W - 1, H - 1, 0.01, 0.012)])
    write_dicom(folder / "cine.dcm", np.stack([pattern(seed=s) for s in range(3)]), PixelSpacing=[0.2, 0.2])
    _png(folder)
    return folder


def test_predict_images_rows_per_frame_with_the_files_spacing_and_no_identifier(tmp_path):
    images = _dicom_folder(tmp_path / "in")
    assert list_images(str(images))[1] == ["cine.dcm", "plain.png", "single.dcm"]
    predictor = _ScriptedPredictor()
    out = tmp_path / "p.csv"
    summary = predict_images(predictor, str(images), str(out), progress=False)
    assert summary["processed"] == 3 and summary["errors"] == 0
    rows = read_predictions(str(out))
    assert [(r["file"], r["frame"]) for r in rows] == [("cine.dcm", 0), ("cine.dcm", 1), ("cine.dcm", 2),
                                                        ("plain.png", None), ("single.dcm", None)]
    mm = {(r["file"], r["frame"]): r["thickness_mm"] for r in rows}
    assert mm[("cine.dcm", 1)] == pytest.approx(2.0) and mm[("single.dcm", None)] == pytest.approx(1.2)
    assert mm[("plain.png", None)] is None  # no spacing known
    assert predictor.spacings[3] is None  # plain.png: none passed
    assert [predictor.spacings[i] for i in (0, 1, 2, 4)] == pytest.approx([0.2, 0.2, 0.2, 0.12])
    text = out.read_text()
    for value in PATIENT.values():
        assert value not in text and value.split("^")[0] not in text
    # resumed: nothing done twice; a table cut after frame 0 of the cine is completed frame by frame
    assert predict_images(predictor, str(images), str(out), progress=False)["skipped"] == 3
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n")  # header and cine frame 0
    again = predict_images(predictor, str(images), str(out), progress=False)
    assert again["processed"] == 3
    assert [(r["file"], r["frame"]) for r in read_predictions(str(out))][:3] == [
        ("cine.dcm", 0), ("cine.dcm", 1), ("cine.dcm", 2)]


def test_predict_images_one_frame_and_spacing_override(tmp_path):
    images = _dicom_folder(tmp_path / "in")
    predictor = _ScriptedPredictor()
    out = tmp_path / "p.jsonl"
    predict_images(predictor, str(images), str(out), progress=False, frame=2, file_spacing=False)
    rows = read_predictions(str(out))
    assert [(r["file"], r["frame"]) for r in rows] == [("cine.dcm", 2), ("plain.png", None), ("single.dcm", None)]
    assert predictor.spacings == [None, None, None]  # the config's spacing (--pixel-spacing) is used instead
    # a frame the cine does not have: an error row for it, the others are predicted
    predictor = _ScriptedPredictor()
    summary = predict_images(predictor, str(images), str(tmp_path / "q.csv"), progress=False, frame=5)
    by_file = {r["file"]: r for r in read_predictions(str(tmp_path / "q.csv"))}
    assert summary["errors"] == 1 and "frame 5 asked for, the file has 3 frame(s)" in by_file["cine.dcm"]["error"]
    assert by_file["single.dcm"]["error"] is None


def test_unreadable_dicom_gets_an_error_row_with_its_reason(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    _with_syntax(write_dicom(images / "video.dcm", pattern()), "1.2.840.10008.1.2.4.102")
    predict_images(_ScriptedPredictor(), str(images), str(tmp_path / "p.csv"), progress=False)
    (row,) = read_predictions(str(tmp_path / "p.csv"))
    assert "MPEG-4" in row["error"] and "1.2.840.10008.1.2.4.102" in row["error"]


@pytest.fixture(scope="module")
def measuring_model(tmp_path_factory):
    """A tiny random LS model (K = 4) that measures its boxes ("box": the box
    height, so every detection has a thickness), saved as config.yaml + model.pth."""
    folder = tmp_path_factory.mktemp("dicom_model")
    cfg = cli.load_config(os.path.join(REPO, "configs", "nt_ls.yaml"), [
        "MODEL.DEVICE", "cpu", "MODEL.VOTING.NUM_PRIMITIVES", "4", "MODEL.VOTING.FC_DIMS", "[16]",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "8", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.MEASURE.METHOD", "box", "MODEL.MEASURE.MAX_DETECTIONS", "3",
    ])
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(folder)).save("model")
    (folder / "config.yaml").write_text(cfg.dump())
    return str(folder / "config.yaml"), str(folder / "model.pth")


def _rounding(spacing):
    """How far mm and px x spacing may differ in a table: px rounded to 0.01, mm to 0.001."""
    return 0.005 * spacing + 0.0005 + 1e-9


def _measured(rows):
    return [r for r in rows if r["thickness_px"] not in ("", None)]


@pytest.mark.slow
def test_predict_tool_on_dicom_writes_thickness_mm_from_the_files_spacing(measuring_model, tmp_path):
    config, weights = measuring_model
    images = _dicom_folder(tmp_path / "in")
    out = tmp_path / "p.csv"
    result = subprocess.run(
        [sys.executable, PREDICT, "--config-file", config, "--input", str(images), "--output", str(out),
         "--no-progress", "MODEL.WEIGHTS", weights],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    spacing = {"single.dcm": 0.12, "cine.dcm": 0.2}
    assert {(r["file"], r["frame"]) for r in rows} == {("cine.dcm", "0"), ("cine.dcm", "1"), ("cine.dcm", "2"),
                                                        ("plain.png", ""), ("single.dcm", "")}
    measured = _measured(rows)
    assert {r["file"] for r in measured} == {"cine.dcm", "plain.png", "single.dcm"}
    for r in measured:
        if r["file"] == "plain.png":
            assert r["thickness_mm"] == ""  # no spacing known for a PNG
        else:  # mm = px x the file's spacing
            assert float(r["thickness_mm"]) == pytest.approx(float(r["thickness_px"]) * spacing[r["file"]],
                                                             abs=_rounding(spacing[r["file"]]))
    everything = out.read_text() + result.stdout + result.stderr
    for value in PATIENT.values():
        assert value not in everything and value.split("^")[0] not in everything

    # --pixel-spacing wins over the files' spacing; --frame picks one frame of the cine
    out2 = tmp_path / "p2.csv"
    code = cli.exit_code(load_tool("predict").main, ["--config-file", config, "--input", str(images), "--output", str(out2),
                                           "--pixel-spacing", "0.5", "--frame", "1", "--no-progress",
                                           "MODEL.WEIGHTS", weights])
    assert code == 0
    rows = read_predictions(str(out2))
    assert sorted({(r["file"], r["frame"]) for r in rows}, key=str) == sorted(
        {("cine.dcm", 1), ("plain.png", None), ("single.dcm", None)}, key=str)
    for r in _measured(rows):
        assert r["thickness_mm"] == pytest.approx(r["thickness_px"] * 0.5, abs=_rounding(0.5))


def test_predict_tool_refuses_a_negative_frame(capsys):
    code = cli.exit_code(load_tool("predict").main, ["--config-file", "x.yaml", "--input", ".", "--output", "p.csv",
                                           "--frame", "-1"])
    assert code == cli.EXIT_USER_ERROR and "--frame -1" in capsys.readouterr().err


@pytest.mark.slow
def test_explain_tool_on_a_cine_frame_uses_the_files_spacing(measuring_model, tmp_path):
    import json

    config, weights = measuring_model
    images = tmp_path / "in"
    images.mkdir()
    frames = np.stack([pattern(seed=s) for s in range(3)])
    write_dicom(images / "cine.dcm", frames, regions=[region(0, 0, W - 1, H - 1, 0.015, 0.025)])
    module = load_tool("explain")
    argv = ["--config-file", config, "--input", str(images), "--output", str(tmp_path / "out"), "--frame", "2",
            "--detections", "1", "--no-progress", "MODEL.WEIGHTS", weights]
    code = cli.exit_code(module.main, argv)
    assert code == 0
    text = (tmp_path / "out" / "cine.json").read_text()
    trace = json.loads(text)
    assert trace["dicom"] == {"frame": 2, "frames": 3, "pixel_spacing_mm": pytest.approx(0.25),
                              "spacing_source": "SequenceOfUltrasoundRegions"}
    (det,) = trace["detections"]
    assert det["thickness_mm"] == pytest.approx(det["thickness_px"] * 0.25, rel=1e-4)
    for value in PATIENT.values():
        assert value not in text and value.split("^")[0] not in text
