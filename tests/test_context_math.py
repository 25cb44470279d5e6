"""Context-branch geometry (docs/method.md section 3, Eq. 4 and Eq. 5) against hand-computed
boxes and torchvision's ROIAlign."""
import pytest
import torch
from torchvision.ops import roi_align

from voting_det.modeling.context import (
    CONTEXT_LAYOUTS,
    context_layout,
    deform_boxes,
    place_context_boxes,
    sample_boxes_bilinear,
    union_box,
)

# Image of height 100 and width 200, proposal centre (x, y) = (50, 80).
IMAGE_SIZE = (100, 200)
CENTRE = torch.tensor([[50.0, 80.0]])
# By hand from the documented table: centre + (dx * 200, dy * 100), size (w * 200, h * 100).
ABOVE_LEFT = [-30.0, 20.0, 50.0, 80.0]  # centre (10, 50), 80 x 60
ABOVE_RIGHT = [50.0, 20.0, 130.0, 80.0]  # centre (90, 50), 80 x 60
LEFT = [-70.0, 65.0, 10.0, 95.0]  # centre (-30, 80), 80 x 30
RIGHT = [90.0, 65.0, 170.0, 95.0]  # centre (130, 80), 80 x 30
BELOW_LEFT = [-30.0, 80.0, 50.0, 110.0]  # centre (10, 95), 80 x 30
BELOW_RIGHT = [50.0, 80.0, 130.0, 110.0]  # centre (90, 95), 80 x 30
HAND_BOXES = {
    2: [ABOVE_LEFT, ABOVE_RIGHT],
    4: [ABOVE_LEFT, ABOVE_RIGHT, LEFT, RIGHT],
    6: [ABOVE_LEFT, ABOVE_RIGHT, LEFT, RIGHT, BELOW_LEFT, BELOW_RIGHT],
}


@pytest.mark.parametrize("num_boxes", [2, 4, 6])
def test_layouts_place_the_documented_boxes(num_boxes):
    boxes = place_context_boxes(CENTRE, IMAGE_SIZE, context_layout(num_boxes))
    assert boxes.shape == (1, num_boxes, 4)
    assert torch.allclose(boxes[0], torch.tensor(HAND_BOXES[num_boxes]), atol=1e-4)


def test_layouts_are_nested_and_not_clipped():
    assert set(CONTEXT_LAYOUTS) == {2, 4, 6}
    assert torch.equal(context_layout(6)[:4], context_layout(4))
    assert torch.equal(context_layout(4)[:2], context_layout(2))
    boxes = place_context_boxes(CENTRE, IMAGE_SIZE, context_layout(6))
    assert boxes[0, :, 0].min() < 0 and boxes[0, :, 3].max() > IMAGE_SIZE[0]


def test_unknown_num_boxes_raises_naming_the_key_and_custom_layouts():
    with pytest.raises(ValueError, match=r"O=3.*\[2, 4, 6\]"):
        context_layout(3)
    custom = [[0.0, -0.5, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2], [0.0, 0.0, 1.0, 1.0]]
    assert torch.equal(context_layout(3, custom=custom), torch.tensor(custom))
    with pytest.raises(ValueError, match="shape"):
        context_layout(2, custom=custom)
    with pytest.raises(ValueError, match="positive"):
        context_layout(1, custom=[[0.0, 0.0, 0.0, 0.3]])


def test_union_box_encloses_all_context_boxes():
    centres = torch.tensor([[50.0, 80.0], [120.0, 10.0]])
    boxes = place_context_boxes(centres, IMAGE_SIZE, context_layout(6))
    union = union_box(boxes)
    assert torch.allclose(union[0], torch.tensor([-70.0, 20.0, 170.0, 110.0]), atol=1e-4)
    assert (union[:, None, :2] <= boxes[..., :2]).all() and (union[:, None, 2:] >= boxes[..., 2:]).all()


def test_deform_boxes_translates_by_gamma_times_size():
    boxes = torch.tensor([[[0.0, 0.0, 40.0, 20.0], [10.0, 10.0, 20.0, 60.0]]])
    assert torch.equal(deform_boxes(boxes, torch.zeros(1, 2, 2)), boxes)
    offsets = torch.tensor([[[1.0, -2.0], [0.5, 0.5]]])
    # Box 0: 40 x 20 -> delta (0.1 * 1 * 40, 0.1 * -2 * 20) = (4, -4); box 1: 10 x 50 -> (0.5, 2.5).
    expected = torch.tensor([[[4.0, -4.0, 44.0, 16.0], [10.5, 12.5, 20.5, 62.5]]])
    assert torch.allclose(deform_boxes(boxes, offsets, gamma=0.1), expected)


def random_boxes_inside(generator, num, height, width, stride):
    """XYXY image boxes whose ROIAlign sample points all lie inside the feature map."""
    margin = stride  # keeps every sample at least half a feature pixel inside
    x0 = margin + torch.rand(num, generator=generator, dtype=torch.float64) * (width * stride / 2 - margin)
    y0 = margin + torch.rand(num, generator=generator, dtype=torch.float64) * (height * stride / 2 - margin)
    w = (0.1 + 0.35 * torch.rand(num, generator=generator, dtype=torch.float64)) * width * stride
    h = (0.1 + 0.35 * torch.rand(num, generator=generator, dtype=torch.float64)) * height * stride
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_sample_boxes_bilinear_equals_roialign_aligned(sampling_ratio):
    g = torch.Generator().manual_seed(0)
    stride, (height, width) = 16, (20, 28)
    features = torch.randn(3, 5, height, width, generator=g, dtype=torch.float64)
    boxes = random_boxes_inside(g, 12, height, width, stride)
    batch_index = torch.tensor([2, 0, 0, 1, 2, 2, 0, 1, 1, 0, 2, 0])
    ours = sample_boxes_bilinear(features, boxes, batch_index, (3, 7), 1.0 / stride, sampling_ratio)
    rois = torch.cat([batch_index[:, None].double(), boxes], dim=1)
    reference = roi_align(
        features, rois, (3, 7), spatial_scale=1.0 / stride, sampling_ratio=sampling_ratio, aligned=True
    )
    assert ours.shape == (12, 5, 3, 7)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_sample_boxes_bilinear_handles_empty_images_and_rejects_bad_indices():
    features = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    assert sample_boxes_bilinear(features, boxes, torch.tensor([1]), (2, 2), 1 / 8).shape == (1, 3, 2, 2)
    no_boxes = sample_boxes_bilinear(features, boxes[:0], torch.zeros(0, dtype=torch.long), (2, 2), 1 / 8)
    assert no_boxes.shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="batch_index"):
        sample_boxes_bilinear(features, boxes, torch.tensor([2]), (2, 2), 1 / 8)


def test_sample_boxes_bilinear_gradient_wrt_boxes_matches_finite_differences():
    height, width, stride = 12, 16, 4
    rows = torch.arange(height, dtype=torch.float64)
    cols = torch.arange(width, dtype=torch.float64)
    ys, xs = torch.meshgrid(rows, cols, indexing="ij")
    smooth = torch.stack([torch.sin(xs / 3) * torch.cos(ys / 4), torch.cos((xs + ys) / 5)])[None]
    boxes = torch.tensor([[5.3, 7.1, 41.7, 29.9], [13.2, 4.4, 30.6, 37.8]], dtype=torch.float64, requires_grad=True)
    batch_index = torch.zeros(2, dtype=torch.long)

    def crop(b):
        return sample_boxes_bilinear(smooth, b, batch_index, (3, 5), 1.0 / stride, sampling_ratio=2)

    assert torch.autograd.gradcheck(crop, (boxes,), eps=1e-6, atol=1e-6)
    crop(boxes).square().sum().backward()
    assert boxes.grad.abs().min() > 0


def test_deformation_offsets_learn_through_the_sampler():
    # Eq. 4 end to end: a linear layer (standing in for FC_G1) predicts the
    # offsets; its weights get a gradient only because the sampler has one.
    torch.manual_seed(0)
    features = torch.randn(1, 4, 25, 40)
    boxes = place_context_boxes(torch.tensor([[320.0, 300.0]]), (400, 640), context_layout(4))
    head = torch.nn.Linear(4, 4 * 2)
    offsets = head(features.mean(dim=(2, 3))).reshape(1, 4, 2)
    moved = deform_boxes(boxes, offsets)
    crops = sample_boxes_bilinear(features, moved.reshape(-1, 4), torch.zeros(4, dtype=torch.long), (4, 4), 1 / 16)
    crops.square().sum().backward()
    assert head.weight.grad.abs().max() > 0
