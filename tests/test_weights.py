"""Loading pretrained ResNet-18 weights into the truncated detectron2 backbones,
checked against torchvision's own ResNet-18 as the independent reference."""
import os
import pickle

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import build_resnet_backbone

from voting_det import add_voting_config
from voting_det.config import merge_config_file
from voting_det.engine.backbone_weights import load_pretrained_backbone

ATOL = 1e-4
INPUT_SIZE = (2, 3, 96, 128)


def _backbone(norm="FrozenBN", channels=3, out_features=("res3", "res4")):
    cfg = get_cfg()
    resnets = cfg.MODEL.RESNETS
    resnets.DEPTH = 18
    resnets.RES2_OUT_CHANNELS = 64
    resnets.NORM = norm
    resnets.OUT_FEATURES = list(out_features)
    return build_resnet_backbone(cfg, ShapeSpec(channels=channels)).eval()


def _randomise_bn_statistics(model):
    """Non-trivial BatchNorm statistics, so a mix-up of mean/var/weight/bias shows."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.fixture(scope="module")
def torchvision_r18(tmp_path_factory):
    """A random torchvision ResNet-18 in eval mode, and the path of its saved state dict."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    _randomise_bn_statistics(model)
    model.eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, str(path)


def _torchvision_features(model, x):
    """torchvision's layer2 and layer3 outputs: detectron2's res3 and res4."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    layer2 = model.layer2(model.layer1(x))
    return layer2, model.layer3(layer2)


def test_torchvision_checkpoint_reproduces_torchvision_features(torchvision_r18):
    reference, path = torchvision_r18
    backbone = _backbone()
    report = load_pretrained_backbone(backbone, path)

    torch.manual_seed(1)
    x = torch.randn(INPUT_SIZE)
    with torch.no_grad():
        layer2, layer3 = _torchvision_features(reference, x)
        out = backbone(x)
    torch.testing.assert_close(out["res3"], layer2, atol=ATOL, rtol=0)
    torch.testing.assert_close(out["res4"], layer3, atol=ATOL, rtol=0)

    assert report["format"] == "torchvision"
    assert report["loaded"] == len(backbone.state_dict())
    assert report["missing"] == [] and report["adapted"] == {}
    unused = set(report["unused"])
    assert {"fc.weight", "fc.bias", "layer4.0.conv1.weight", "bn1.num_batches_tracked"} <= unused
    assert not any(k.startswith(("layer1.", "layer2.", "layer3.")) and "num_batches" not in k for k in unused)


def test_grey_stem_sums_rgb_kernels(torchvision_r18):
    _, path = torchvision_r18
    colour, grey = _backbone(), _backbone(channels=1)
    load_pretrained_backbone(colour, path)
    report = load_pretrained_backbone(grey, path)
    assert list(report["adapted"]) == ["stem.conv1.weight"]

    torch.manual_seed(2)
    image = torch.randn(INPUT_SIZE[0], 1, *INPUT_SIZE[2:])
    with torch.no_grad():
        expected = colour(image.expand(-1, 3, -1, -1))["res4"]
        actual = grey(image)["res4"]
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_context_backbone_skips_res3_outputs_and_loads(torchvision_r18):
    reference, path = torchvision_r18
    backbone = _backbone(out_features=("res4",))
    load_pretrained_backbone(backbone, path)
    x = torch.randn(INPUT_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["res4"], _torchvision_features(reference, x)[1], atol=ATOL, rtol=0)


def test_detectron2_checkpoint_round_trip(torchvision_r18, tmp_path):
    _, path = torchvision_r18
    source = _backbone()
    load_pretrained_backbone(source, path)
    d2_path = tmp_path / "model_final.pth"
    state = {f"backbone.bottom_up.{k}": v for k, v in source.state_dict().items()}
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(2, 4)
    torch.save({"model": state, "iteration": 7}, d2_path)

    target = _backbone()
    report = load_pretrained_backbone(target, str(d2_path))
    assert report["format"] == "detectron2" and report["prefix"] == "backbone.bottom_up."
    assert report["unused"] == ["roi_heads.box_predictor.cls_score.weight"]
    expected = source.state_dict()
    for key, value in target.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_pickle_refused_without_trust_and_read_with_it(tmp_path):
    torch.manual_seed(3)
    source = _backbone()
    for buffer in source.buffers():
        buffer.copy_(torch.rand_like(buffer) + 0.5)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in source.state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, f)

    with pytest.raises(ValueError, match="TRUST_PICKLE") as err:
        load_pretrained_backbone(_backbone(), str(path))
    assert "can run code" in str(err.value)

    target = _backbone()
    report = load_pretrained_backbone(target, str(path), trust_pickle=True)
    assert report["loaded"] == len(source.state_dict()) and report["missing"] == []
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def _caffe2_name(key):
    """Detectron's Caffe2 name of a detectron2 ResNet key, written out independently."""
    layer, param = key.rsplit(".", 1)
    is_norm = layer.endswith(".norm")
    layer = layer[: -len(".norm")] if is_norm else layer
    if layer == "stem.conv1":
        layer = "res_conv1" if is_norm else "conv1"
    layer = layer.replace(".conv1", ".branch2a").replace(".conv2", ".branch2b").replace(".shortcut", ".branch1")
    suffix = {"weight": "bn_s", "bias": "bn_b"}[param] if is_norm else "w"
    return f"{layer}_{suffix}".replace(".", "_")


def test_caffe2_names_load_with_folded_batchnorm(tmp_path):
    """Detectron's C2 names (``res2_0_branch2a_w``, ``res_conv1_bn_s``, no running stats)."""
    torch.manual_seed(4)
    source = _backbone()
    for buffer in source.buffers():
        buffer.copy_(torch.rand_like(buffer) + 0.5)
    c2 = {
        _caffe2_name(key): value.numpy()
        for key, value in source.state_dict().items()
        if not key.endswith(("running_mean", "running_var"))
    }
    assert {"conv1_w", "res_conv1_bn_s", "res2_0_branch2a_w", "res3_0_branch1_bn_s"} <= set(c2)
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": c2}, f)

    target = _backbone()
    report = load_pretrained_backbone(target, str(path), trust_pickle=True)
    assert report["format"] == "caffe2" and report["missing"] == [] and report["unused"] == []
    for key, value in target.state_dict().items():
        if key.endswith("running_mean"):
            assert torch.equal(value, torch.zeros_like(value)), key
        elif not key.endswith("running_var"):
            assert torch.equal(value, source.state_dict()[key]), key


def test_groupnorm_backbone_refused_with_config_hint(torchvision_r18):
    _, path = torchvision_r18
    with pytest.raises(ValueError, match="MODEL.RESNETS.NORM: FrozenBN") as err:
        load_pretrained_backbone(_backbone(norm="GN"), path)
    assert "GroupNorm" in str(err.value)


def test_wrong_conv_shape_names_key_and_shapes(torchvision_r18, tmp_path):
    reference, _ = torchvision_r18
    state = dict(reference.state_dict())
    state["layer2.0.conv2.weight"] = torch.zeros(128, 64, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="layer2.0.conv2.weight") as err:
        load_pretrained_backbone(_backbone(), str(path))
    assert "(128, 64, 3, 3)" in str(err.value) and "(128, 128, 3, 3)" in str(err.value)


def test_deeper_resnet_refused_naming_extra_block(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match=r"res2\.2\.conv1\.weight \(file: layer1\.2\.conv1\.weight\)"):
        load_pretrained_backbone(_backbone(), str(path))


def test_missing_keys_refused_unless_allowed(torchvision_r18, tmp_path):
    reference, _ = torchvision_r18
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("layer3.1.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="res4.1.conv1.weight"):
        load_pretrained_backbone(_backbone(), str(path))
    report = load_pretrained_backbone(_backbone(), str(path), allow_missing=True)
    assert "res4.1.conv2.norm.running_var" in report["missing"]


def test_non_weight_pth_refused_without_trust(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match="TRUST_PICKLE"):
        load_pretrained_backbone(_backbone(), str(path))


def test_config_keys_load_pretrained_weights_into_both_backbones(tmp_path):
    """MODEL.VOTING/CONTEXT.PRETRAINED_BACKBONE: building the model reads no
    file; the checkpointer's conversion step loads a torchvision file into both
    backbones (the trainer calls it when training starts)."""
    from voting_det.engine.checkpoint import SafeCheckpointer

    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = str(tmp_path / "resnet18.pth")
    torch.save(reference.state_dict(), path)
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, os.path.join(os.path.dirname(__file__), "..", "configs", "nt_voting.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "FrozenBN",
                         "MODEL.VOTING.PRETRAINED_BACKBONE", path, "MODEL.CONTEXT.PRETRAINED_BACKBONE", path])
    missing = cfg.clone()
    missing.merge_from_list(["MODEL.VOTING.PRETRAINED_BACKBONE", str(tmp_path / "absent.pth")])
    build_model(missing)  # no file read while building
    model = build_model(cfg)
    SafeCheckpointer.from_config(cfg, model).load_pretrained_backbones(cfg)
    summed = reference.conv1.weight.sum(dim=1, keepdim=True)  # grey stem: RGB kernels summed
    for backbone in (model.backbone, model.context_backbone):
        assert torch.allclose(backbone.stem.conv1.weight, summed)
        assert torch.equal(backbone.res4[1].conv2.weight, reference.layer3[1].conv2.weight)


def _voting_model(*opts):
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, os.path.join(os.path.dirname(__file__), "..", "configs", "nt_voting.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg, build_model(cfg)


def test_context_backbone_starts_as_a_copy_of_a_stage1_local_backbone_only_when_asked(tmp_path):
    """MODEL.CONTEXT.INIT_FROM_LOCAL: loading weights without a context backbone
    (an LCF model) copies their local backbone into it, as separate tensors; off,
    the context backbone keeps its own initialisation; a checkpoint with context
    weights (stage 2 resumed) always loads its own."""
    from voting_det.engine.checkpoint import SafeCheckpointer
    from voting_det.engine.two_stage import STAGE2_ALLOW_MISSING

    torch.manual_seed(1)
    lcf_cfg = get_cfg()
    add_voting_config(lcf_cfg)
    merge_config_file(lcf_cfg, os.path.join(os.path.dirname(__file__), "..", "configs", "nt_lcf.yaml"))
    lcf_cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    lcf = build_model(lcf_cfg)
    assert lcf.context_backbone is None
    lcf_path = str(tmp_path / "lcf.pth")
    torch.save({"model": lcf.state_dict()}, lcf_path)
    local = {k[len("backbone."):]: v for k, v in lcf.state_dict().items() if k.startswith("backbone.")}

    torch.manual_seed(2)
    _, off = _voting_model()
    before = {k: v.clone() for k, v in off.context_backbone.state_dict().items()}
    with pytest.raises(ValueError, match="roi_heads.context_head"):  # a part of the model: refused unless allowed
        SafeCheckpointer(off).load(lcf_path)
    SafeCheckpointer(off, allow_missing=STAGE2_ALLOW_MISSING).load(lcf_path)
    assert all(torch.equal(off.context_backbone.state_dict()[k], before[k]) for k in before)
    assert torch.equal(off.backbone.res4[0].conv1.weight, local["res4.0.conv1.weight"])

    torch.manual_seed(2)
    cfg, on = _voting_model("MODEL.CONTEXT.INIT_FROM_LOCAL", "True")
    SafeCheckpointer.from_config(cfg, on, allow_missing=STAGE2_ALLOW_MISSING).load(lcf_path)
    ctx = on.context_backbone.state_dict()
    assert ctx.keys() == local.keys() and len(ctx) > 10
    for k in local:
        assert torch.equal(ctx[k], local[k]), k
    assert not torch.equal(ctx["stem.conv1.weight"], before["stem.conv1.weight"])
    with torch.no_grad():  # own tensors: changing one backbone leaves the other
        on.context_backbone.stem.conv1.weight.add_(1.0)
    assert torch.equal(on.backbone.stem.conv1.weight, local["stem.conv1.weight"])

    stage2_path = str(tmp_path / "stage2.pth")
    torch.save({"model": on.state_dict()}, stage2_path)
    torch.manual_seed(3)
    cfg, resumed = _voting_model("MODEL.CONTEXT.INIT_FROM_LOCAL", "True")
    SafeCheckpointer.from_config(cfg, resumed).load(stage2_path)
    assert torch.equal(resumed.context_backbone.stem.conv1.weight, local["stem.conv1.weight"] + 1.0)

    with pytest.raises(ValueError, match="MODEL.CONTEXT.INIT_FROM_LOCAL"):
        _voting_model("MODEL.CONTEXT.INIT_FROM_LOCAL", "True", "MODEL.CONTEXT.PRETRAINED_BACKBONE", lcf_path)


def test_checkpoints_of_the_earlier_layout_load_with_their_names_converted(tmp_path):
    """A Proposed checkpoint written before the ROI head owned the context head
    and mu (names as tests/test_golden.py's recorded layout) loads into today's
    model, every tensor in its place."""
    from tests.test_golden import recorded_name
    from voting_det.engine.checkpoint import SafeCheckpointer

    torch.manual_seed(4)
    cfg, source = _voting_model()
    old = {recorded_name(k): v for k, v in source.state_dict().items()}
    assert "fusion_logit" in old and "context_head.cls_score.weight" in old and "roi_heads.stages.0.fc.1.weight" in old
    path = str(tmp_path / "old_layout.pth")
    torch.save({"model": old}, path)
    torch.manual_seed(5)
    _, target = _voting_model()
    SafeCheckpointer.from_config(cfg, target).load(path)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
