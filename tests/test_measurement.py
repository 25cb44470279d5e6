"""NT thickness measurement (voting_det.measurement) on drawn phantoms whose
inner borders are known to the pixel."""
import numpy as np
import pytest

from voting_det.measurement import (
    Measurement,
    border_measurement,
    box_measurement,
    profile_measurement,
    to_millimetres,
)

H, W = 120, 200
LINE, DARK, TISSUE, LINE_PX = 200.0, 20.0, 70.0, 4


def phantom(inner_top, inner_bottom, columns=None, image=None):
    """Two bright lines (LINE_PX rows each) around a dark band: the upper line's
    last row is inner_top - 1 and the lower line's first row is inner_bottom, so
    the inner borders lie at y = inner_top and y = inner_bottom (pixel edges; row
    r spans [r, r + 1)) and the thickness is inner_bottom - inner_top pixels."""
    img = np.full((H, W), TISSUE) if image is None else image
    cols = slice(None) if columns is None else columns
    img[inner_top - LINE_PX:inner_top, cols] = LINE
    img[inner_top:inner_bottom, cols] = DARK
    img[inner_bottom:inner_bottom + LINE_PX, cols] = LINE
    return img


@pytest.mark.parametrize("top,bottom", [(50, 60), (40, 63), (55, 61)])
def test_profile_finds_the_inner_borders_of_a_drawn_nt(top, bottom):
    img = phantom(top, bottom)
    box = (30.0, top - LINE_PX - 2.0, 170.0, bottom + LINE_PX + 2.0)
    m = profile_measurement(img, box)
    assert m.valid
    assert m.thickness_px == pytest.approx(bottom - top, abs=0.25)
    assert m.calipers[0, 1] == pytest.approx(top, abs=0.25) and m.calipers[1, 1] == pytest.approx(bottom, abs=0.25)
    assert 30 <= m.calipers[0, 0] == m.calipers[1, 0] <= 170


def test_profile_takes_the_maximum_thickness_along_the_nt_not_a_speckle_band():
    img = phantom(50, 60)
    phantom(48, 62, columns=slice(90, 120), image=img)  # thicker (14 px) over 30 columns in the middle
    img[:, 60:65] = TISSUE  # one band with no NT profile at all
    rng = np.random.default_rng(0)
    noisy = img * rng.gamma(16.0, 1 / 16.0, size=img.shape)  # unit-mean multiplicative speckle
    m = profile_measurement(noisy, (30.0, 42.0, 170.0, 68.0))
    assert m.thickness_px == pytest.approx(14.0, abs=0.75)
    assert 90 <= m.calipers[0, 0] <= 120


def test_profile_takes_the_nearest_line_not_a_brighter_layer_farther_out():
    """Layered tissue: a dimmer echogenic line right above the NT and a much
    brighter line 12 px farther up. The calipers go on the near line's inner
    border (the brightest-row rule put them on the far line's)."""
    img = phantom(50, 60)
    img[46:50, :] = 120.0  # the near upper line, dimmer than the lower one
    img[30:34, :] = 255.0  # a brighter layer farther out, tissue between
    m = profile_measurement(img, (30.0, 28.0, 170.0, 66.0))
    assert m.calipers[0, 1] == pytest.approx(50, abs=0.5) and m.calipers[1, 1] == pytest.approx(60, abs=0.25)
    assert m.thickness_px == pytest.approx(10.0, abs=0.5)


def test_profile_skips_a_speckle_bump_inside_a_wide_translucency(monkeypatch):
    """A 35 px translucency with a faint bump (20 grey levels, the lines 180)
    across it: the bump is no echogenic line (PROFILE_LINE_SHARE), so the
    calipers go on the lines' inner borders; the absolute contrast alone
    (share 0, the earlier rule) stops at the bump."""
    import voting_det.measurement as measurement

    img = phantom(40, 75)
    img[50:53, :] = DARK + 20.0
    box = (30.0, 34.0, 170.0, 81.0)
    m = profile_measurement(img, box)
    assert m.calipers[0, 1] == pytest.approx(40, abs=0.25) and m.calipers[1, 1] == pytest.approx(75, abs=0.25)
    monkeypatch.setattr(measurement, "PROFILE_LINE_SHARE", 0.0)
    assert profile_measurement(img, box).thickness_px < 15


def test_profile_without_an_nt_is_invalid_not_a_number():
    flat = np.full((H, W), TISSUE)
    m = profile_measurement(flat, (30.0, 40.0, 170.0, 70.0))
    assert not m.valid and np.isnan(m.thickness_px) and np.isnan(m.calipers).all()
    assert not profile_measurement(flat, (30.0, 40.0, 30.0, 70.0)).valid  # an empty box
    with pytest.raises(ValueError, match="grey"):
        profile_measurement(np.zeros((H, W, 3)), (30.0, 40.0, 170.0, 70.0))


def test_box_and_border_methods_and_millimetres():
    m = box_measurement((10.0, 20.0, 110.0, 52.0))
    np.testing.assert_allclose(m.calipers, [[60.0, 20.0], [60.0, 52.0]])
    assert m.thickness_px == 32.0
    b = border_measurement((10.0, 20.0, 110.0, 52.0), [12.0, 24.5, 108.0, 47.0])
    np.testing.assert_allclose(b.calipers, [[60.0, 24.5], [60.0, 47.0]])
    assert b.thickness_px == pytest.approx(22.5)
    assert not border_measurement((10.0, 20.0, 110.0, 52.0), [None, None, None, None]).valid
    assert not border_measurement((10.0, 20.0, 110.0, 52.0), [0.0, 40.0, 0.0, 30.0]).valid  # crossed
    assert to_millimetres(22.5, 0.1) == pytest.approx(2.25)
    assert np.isnan(to_millimetres(22.5, None)) and np.isnan(to_millimetres(22.5, 0.0))
    assert isinstance(Measurement.invalid(), Measurement)


def test_the_model_measures_its_detection_on_the_image_and_rescales_to_the_output():
    """VotingRCNN's measurement step on a drawn NT at input size 120 x 200,
    output size twice that: calipers, thickness in output pixels, mm from the
    input's pixel spacing (else the config's), the 3.5 mm flag."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    from .test_model import small_cfg

    model = build_model(small_cfg("nt_lcf.yaml", **{"MODEL.MEASURE.PIXEL_SPACING": 0.05}))
    img = phantom(50, 60)
    result = Instances((H, W))
    result.pred_boxes = Boxes(torch.tensor([[30.0, 44.0, 170.0, 66.0], [10.0, 10.0, 50.0, 30.0]]))
    result.scores = torch.tensor([0.9, 0.2])
    result.pred_classes = torch.zeros(2, dtype=torch.int64)
    image = torch.from_numpy(img).float()[None].repeat(3, 1, 1)
    model._measure(result, image)
    assert torch.isnan(result.pred_calipers[1]).all()  # MAX_DETECTIONS 1: only the best is measured
    model._rescale_intermediate(result, 2 * H, 2 * W)
    model._thickness(result, pixel_spacing=None)
    assert float(result.pred_nt_thickness_px[0]) == pytest.approx(20.0, abs=0.5)  # 10 input px, output x2
    assert float(result.pred_nt_thickness_mm[0]) == pytest.approx(1.0, abs=0.03)
    assert not bool(result.pred_nt_above_cutoff[0])
    model._thickness(result, pixel_spacing=0.2)  # the input's own spacing wins
    assert float(result.pred_nt_thickness_mm[0]) == pytest.approx(4.0, abs=0.1) and bool(result.pred_nt_above_cutoff[0])


def test_prediction_rows_carry_the_thickness_and_calipers():
    import torch
    from detectron2.structures import Boxes, Instances

    from voting_det.inference import detection_rows

    inst = Instances((100, 200))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 110.0, 52.0], [0.0, 0.0, 5.0, 5.0]]))
    inst.scores = torch.tensor([0.4, 0.9])  # the second is the best: rank 1
    inst.pred_classes = torch.zeros(2, dtype=torch.int64)
    inst.pred_calipers = torch.tensor([[[60.0, 24.0], [60.0, 48.0]], [[float("nan")] * 2] * 2])
    inst.pred_nt_thickness_px = torch.tensor([24.0, float("nan")])
    inst.pred_nt_thickness_mm = torch.tensor([3.6, float("nan")])
    inst.pred_nt_above_cutoff = torch.tensor([True, False])
    first, second = detection_rows("a.png", 100, 200, inst)
    assert first["rank"] == 1 and first["thickness_px"] is None and first["caliper_upper_x"] is None
    assert second["thickness_px"] == 24.0 and second["thickness_mm"] == 3.6 and second["above_cutoff"] == 1
    assert (second["caliper_upper_x"], second["caliper_upper_y"], second["caliper_lower_y"]) == (60.0, 24.0, 48.0)


def test_the_predictor_equals_detectron2s_and_carries_the_pixel_spacing(tmp_path):
    """build_predictor's call preprocesses as detectron2's DefaultPredictor (same
    boxes and scores on the same weights); with pixel_spacing the thickness in
    mm is the thickness in pixels times that spacing."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    from voting_det.engine import build_predictor

    from .test_model import small_cfg

    # the box method: defined for any box of the untrained model
    cfg = small_cfg("nt_lcf.yaml", **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "MODEL.MEASURE.METHOD": "box"})
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    image = np.repeat(phantom(50, 60)[:, :, None], 3, axis=2).astype(np.uint8)
    ours = build_predictor(cfg)
    theirs = DefaultPredictor(cfg)(image)["instances"]
    plain = ours(image)["instances"]
    assert len(theirs) > 0
    assert torch.equal(plain.pred_boxes.tensor, theirs.pred_boxes.tensor) and torch.equal(plain.scores, theirs.scores)
    spaced = ours(image, pixel_spacing=0.07)["instances"]
    px, mm = spaced.pred_nt_thickness_px[0], spaced.pred_nt_thickness_mm[0]
    assert torch.isnan(plain.pred_nt_thickness_mm[0]) and float(mm) == pytest.approx(0.07 * float(px), rel=1e-6)
