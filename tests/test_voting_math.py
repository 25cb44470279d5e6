"""The primitive module's math (docs/method.md section 2, Eq. 2 and Eq. 3) against hand-computed
cases and independent references (scipy.signal, numpy, torchvision's ROIAlign)."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d, correlate2d
from torchvision.ops import roi_align

from voting_det.modeling import (
    PrimitiveVoting,
    bilinear_cell_weights,
    contributions,
    contributions_bilinear,
    enlarge_boxes,
    gaussian_heatmap_target,
    grid_to_image,
    heatmap_loss,
    image_to_grid,
    interpolate_bilinear,
    kmeans_semantic_templates,
    nearest_cell_index,
    normalize_features,
    reconstruct,
    response_maps,
    semantic_templates,
    soft_argmax,
    spatial_templates,
    temperature,
    trace_back,
    trace_back_from_maps,
    vote,
    vote_operator,
    vote_per_primitive,
)


def random_spatial_templates(num, size, generator):
    """Asymmetric random templates with unit mass."""
    return spatial_templates(torch.randn(num, *size, generator=generator, dtype=torch.float64) * 2)


# ---------------------------------------------------------------- templates and responses


def test_normalize_features_unit_vectors_and_zero_crop_stays_zero():
    gamma = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    gamma[1] = 0  # a crop entirely outside the ultrasound fan
    gamma.requires_grad_(True)
    out = normalize_features(gamma)
    norms = out.norm(dim=1)
    assert torch.allclose(norms[0], torch.ones_like(norms[0]), atol=1e-9)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert torch.isfinite(gamma.grad).all()


def test_semantic_templates_unit_length_and_response_maps_are_clipped_cosines():
    g = torch.Generator().manual_seed(0)
    v = semantic_templates(torch.randn(6, 5, generator=g) * 3)
    assert torch.allclose(v.norm(dim=1), torch.ones(6), atol=1e-6)
    gamma_n = normalize_features(torch.randn(2, 5, 3, 4, generator=g))
    Rs = response_maps(gamma_n, v)
    assert Rs.shape == (2, 6, 3, 4)
    g_np, v_np = gamma_n.numpy(), v.numpy()
    expected = np.maximum(np.einsum("rcmn,kc->rkmn", g_np, v_np), 0)
    np.testing.assert_allclose(Rs.numpy(), expected, atol=1e-6)
    assert (Rs == 0).any() and (Rs > 0).any()


def test_spatial_templates_nonnegative_with_unit_mass():
    D = spatial_templates(torch.randn(4, 5, 9) * 10)
    assert (D >= 0).all()
    assert torch.allclose(D.sum(dim=(1, 2)), torch.ones(4), atol=1e-6)


# ---------------------------------------------------------------- Eq. 2, the vote


def test_vote_one_hot_response_votes_for_i_plus_d_with_weight_D_d():
    # One primitive responding only at cell (row 2, col 3) of a 6 x 8 grid. Its
    # 3 x 5 template (centre (1, 2)) puts 0.7 on d = (+1 row, +2 cols) and 0.3 on
    # d = (-1 row, 0 cols): the votes land at (3, 5) and (1, 3).
    Rs = torch.zeros(1, 1, 6, 8)
    Rs[0, 0, 2, 3] = 1.0
    D = torch.zeros(1, 3, 5)
    D[0, 1 + 1, 2 + 2] = 0.7
    D[0, 1 - 1, 2 + 0] = 0.3
    expected = torch.zeros(6, 8)
    expected[3, 5] = 0.7
    expected[1, 3] = 0.3
    assert torch.allclose(vote(Rs, D)[0], expected)
    # At the top-left corner the upward vote leaves the grid and is lost (zero padding).
    Rs = torch.zeros(1, 1, 6, 8)
    Rs[0, 0, 0, 0] = 1.0
    expected = torch.zeros(6, 8)
    expected[1, 2] = 0.7
    assert torch.allclose(vote(Rs, D)[0], expected)


@pytest.mark.parametrize("grid,kernel", [((6, 24), (11, 47)), ((6, 24), (5, 9)), ((8, 32), (15, 63)), ((4, 7), (3, 5))])
def test_vote_matches_scipy_convolve2d(grid, kernel):
    g = torch.Generator().manual_seed(1)
    num_proposals, num_templates = 3, 5
    Rs = torch.rand(num_proposals, num_templates, *grid, generator=g, dtype=torch.float64)
    D = random_spatial_templates(num_templates, kernel, g)
    Phi = vote(Rs, D)
    per_primitive = vote_per_primitive(Rs, D)
    for r in range(num_proposals):
        expected_k = [convolve2d(Rs[r, k].numpy(), D[k].numpy(), mode="same") for k in range(num_templates)]
        np.testing.assert_allclose(per_primitive[r].numpy(), np.stack(expected_k), atol=1e-12)
        np.testing.assert_allclose(Phi[r].numpy(), np.mean(expected_k, axis=0), atol=1e-12)
    assert torch.allclose(per_primitive.sum(dim=1) / num_templates, Phi, atol=1e-12)


def test_vote_operator_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd"):
        vote_operator(torch.ones(1, 4, 5), (3, 3))


def test_reconstruct_is_the_adjoint_of_the_vote_and_matches_scipy_correlate2d():
    g = torch.Generator().manual_seed(2)
    grid, kernel, num_templates = (6, 24), (11, 47), 4
    Rs = torch.rand(2, num_templates, *grid, generator=g, dtype=torch.float64)
    Phi = torch.rand(2, *grid, generator=g, dtype=torch.float64)
    D = random_spatial_templates(num_templates, kernel, g)
    Rc = reconstruct(Phi, D)
    # <vote_k(Rs_k), Phi> == <Rs_k, reconstruct_k(Phi)> for every k.
    lhs = (vote_per_primitive(Rs, D) * Phi[:, None]).sum(dim=(2, 3))
    rhs = (Rs * Rc).sum(dim=(2, 3))
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    for r in range(2):
        for k in range(num_templates):
            expected = correlate2d(Phi[r].numpy(), D[k].numpy(), mode="same")
            np.testing.assert_allclose(Rc[r, k].numpy(), expected, atol=1e-12)


# ---------------------------------------------------------------- location


def test_temperature_is_exp_of_clamped_log_temperature():
    assert temperature(torch.tensor(0.5), -1.0, 2.0).item() == pytest.approx(math.exp(0.5))
    assert temperature(torch.tensor(10.0), -1.0, 2.0).item() == pytest.approx(math.exp(2.0))
    assert temperature(torch.tensor(-10.0), -1.0, 2.0).item() == pytest.approx(math.exp(-1.0))


def test_soft_argmax_sharp_peak_returns_that_cell_centre():
    Phi = torch.zeros(2, 6, 24)
    Phi[0, 4, 17] = 1.0
    Phi[1, 0, 2] = 1.0
    p, centre = soft_argmax(Phi, torch.tensor(-3.0), t_min=-3.0, t_max=3.0)
    assert torch.allclose(centre, torch.tensor([[17.5, 4.5], [2.5, 0.5]]), atol=1e-4)
    assert torch.allclose(p.sum(dim=(1, 2)), torch.ones(2), atol=1e-6)


def test_soft_argmax_matches_numpy_formula_and_clamps_temperature():
    g = torch.Generator().manual_seed(3)
    Phi = torch.rand(2, 3, 5, generator=g, dtype=torch.float64)
    p, centre = soft_argmax(Phi, torch.tensor(5.0, dtype=torch.float64), t_min=-1.0, t_max=0.25, eps=1e-6)
    for r in range(2):
        x = Phi[r].numpy()
        z = (x - x.mean()) / (x.std() + 1e-6) / math.exp(0.25)
        expected = np.exp(z) / np.exp(z).sum()
        np.testing.assert_allclose(p[r].numpy(), expected, rtol=1e-10)
        rows, cols = np.mgrid[0:3, 0:5]
        expected_centre = [(expected * (cols + 0.5)).sum(), (expected * (rows + 0.5)).sum()]
        np.testing.assert_allclose(centre[r].numpy(), expected_centre)


def test_soft_argmax_standardisation_makes_p_non_uniform_for_a_tiny_range():
    # At initialisation Phi varies by ~1e-6 across the grid: a plain softmax is
    # uniform to a few 1e-6 (relative), the standardised one still peaks.
    Phi = torch.full((1, 6, 24), 0.01)
    Phi[0, 2, 20] += 1e-6
    Phi[0, :, :3] -= 1e-6
    p, centre = soft_argmax(Phi, torch.tensor(0.0))
    plain = torch.softmax(Phi.reshape(1, -1), dim=1)
    assert (plain.max() / plain.min()).item() - 1 < 1e-5
    assert (p.max() / p.min()).item() > 2
    assert p.reshape(-1).argmax().item() == 2 * 24 + 20
    assert centre[0, 0].item() > 12.5  # pulled right of the grid centre, away from the low columns


def test_grid_to_image_hand_numbers_for_a_non_square_crop():
    crop = torch.tensor([[100.0, 50.0, 340.0, 110.0]])  # 240 x 60 px crop on a 6 x 24 grid: 10 px cells
    cells = torch.tensor([[12.0, 3.0]])
    assert torch.allclose(grid_to_image(cells, crop, (6, 24)), torch.tensor([[220.0, 80.0]]))
    cells = torch.tensor([[0.5, 0.5]])
    assert torch.allclose(grid_to_image(cells, crop, (6, 24)), torch.tensor([[105.0, 55.0]]))
    # and back: pixel (220, 80) is 12 cells right and 3 cells down of the crop's corner
    assert torch.allclose(image_to_grid(torch.tensor([[220.0, 80.0]]), crop, (6, 24)), torch.tensor([[12.0, 3.0]]))


def test_grid_to_image_agrees_with_roialign_aligned_sampling():
    # A feature map whose value at pixel (row, col) is its continuous x (col + 0.5)
    # or y (row + 0.5); ROIAlign(aligned=True) with one sample at each cell's
    # centre reads the image position of that cell centre.
    height, width = 64, 96
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    features = torch.stack([xs, ys])[None].float()
    box = torch.tensor([[0.0, 10.3, 12.7, 70.1, 31.9]])
    grid = (3, 8)
    sampled = roi_align(features, box, grid, spatial_scale=1.0, sampling_ratio=1, aligned=True)[0]
    rows, cols = torch.meshgrid(torch.arange(3) + 0.5, torch.arange(8) + 0.5, indexing="ij")
    cells = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)
    mapped = grid_to_image(cells, box[:, 1:].expand(cells.shape[0], 4), grid)
    assert torch.allclose(mapped[:, 0], sampled[0].reshape(-1), atol=1e-4)
    assert torch.allclose(mapped[:, 1], sampled[1].reshape(-1), atol=1e-4)


def test_enlarge_boxes_scales_about_the_centre_per_axis():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 30.0]])  # 40 x 10, centre (30, 25)
    assert torch.allclose(enlarge_boxes(boxes, 1.5, 3.0), torch.tensor([[0.0, 10.0, 60.0, 40.0]]))


def test_nearest_cell_and_bilinear_weights():
    cells = torch.tensor([[2.9, 1.2], [-3.0, 9.0]])
    assert nearest_cell_index(cells, (3, 4)).tolist() == [1 * 4 + 2, 2 * 4 + 0]
    grid = torch.arange(12.0).reshape(1, 3, 4)
    # Cell centres: value at (1.5, 0.5) is grid[0, 1]; halfway to (2.5, 0.5) is the mean.
    assert interpolate_bilinear(grid, torch.tensor([[1.5, 0.5]])).item() == pytest.approx(1.0)
    assert interpolate_bilinear(grid, torch.tensor([[2.0, 0.5]])).item() == pytest.approx(1.5)
    assert interpolate_bilinear(grid, torch.tensor([[2.0, 1.0]])).item() == pytest.approx((1 + 2 + 5 + 6) / 4)
    assert torch.allclose(bilinear_cell_weights(cells, (3, 4)).sum(dim=(1, 2)), torch.ones(2))


# ---------------------------------------------------------------- Eq. 3, trace-back


def hand_case():
    """K = 1 on a 3 x 4 grid; D (3 x 3) keeps 0.25 on the spot and sends 0.75 one
    cell right. Rs = 1.0 at (1, 0) and 0.5 at (1, 3).

    Phi: (1,0) 0.25, (1,1) 0.75, (1,3) 0.125 (the 0.375 voted right of (1,3) leaves the grid).
    Rc(i) = 0.25 Phi(i) + 0.75 Phi(i + right):
        (1,0) 0.0625 + 0.5625 = 0.625, (1,1) 0.1875, (1,2) 0.09375, (1,3) 0.03125.
    """
    Rs = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    Rs[0, 0, 1, 0], Rs[0, 0, 1, 3] = 1.0, 0.5
    D = torch.zeros(1, 3, 3, dtype=torch.float64)
    D[0, 1, 1], D[0, 1, 2] = 0.25, 0.75
    return Rs, D


def test_trace_back_hand_computed_case():
    Rs, D = hand_case()
    Phi = vote(Rs, D)
    expected_phi = torch.zeros(3, 4, dtype=torch.float64)
    expected_phi[1, 0], expected_phi[1, 1], expected_phi[1, 3] = 0.25, 0.75, 0.125
    assert torch.allclose(Phi[0], expected_phi)
    expected_rc = torch.zeros(3, 4, dtype=torch.float64)
    expected_rc[1] = torch.tensor([0.625, 0.1875, 0.09375, 0.03125], dtype=torch.float64)
    assert torch.allclose(reconstruct(Phi, D)[0, 0], expected_rc)
    # tau = 0: B = {(1,0), (1,3)}; sum Rs B = 1.5, sum Rc B = 0.65625,
    # sum Rs = 1.5, sum Rc = 0.9375 -> alpha = 2.15625 / 2.4375 = 23 / 26.
    assert trace_back(Rs, D, Phi).item() == pytest.approx(23 / 26)
    # tau = 0.1: Rc must exceed 0.0625, which drops (1,3) -> (1.0 + 0.625) / 2.4375 = 2 / 3.
    assert trace_back(Rs, D, Phi, tau=0.1).item() == pytest.approx(2 / 3)
    # normalize: (1.5 / 1.5 + 0.65625 / 0.9375) / 2 = (1 + 0.7) / 2.
    assert trace_back(Rs, D, Phi, normalize=True).item() == pytest.approx(0.85)


def test_trace_back_delta_template_single_active_primitive_scores_one():
    g = torch.Generator().manual_seed(4)
    Rs = torch.zeros(2, 3, 4, 6, dtype=torch.float64)
    Rs[:, 0] = torch.rand(2, 4, 6, generator=g, dtype=torch.float64) * (torch.rand(2, 4, 6, generator=g) > 0.5)
    D = torch.zeros(3, 7, 11, dtype=torch.float64)
    D[:, 3, 5] = 1.0  # all mass at the centre: every primitive votes for where it is
    alpha = trace_back(Rs, D, vote(Rs, D))
    assert torch.allclose(alpha[:, 0], torch.ones(2, dtype=torch.float64))
    assert torch.equal(alpha[:, 1:], torch.zeros(2, 2, dtype=torch.float64))  # inactive primitives


def test_trace_back_alpha_in_unit_interval_and_zero_without_mass():
    g = torch.Generator().manual_seed(5)
    Rs = torch.relu(torch.randn(4, 8, 6, 24, generator=g, dtype=torch.float64))
    Rs[0, 3] = 0
    D = random_spatial_templates(8, (11, 47), g)
    Phi = vote(Rs, D)
    for normalize in (False, True):
        for tau in (0.0, 0.3):
            alpha = trace_back(Rs, D, Phi, tau=tau, normalize=normalize)
            assert alpha.shape == (4, 8)
            assert ((alpha >= 0) & (alpha <= 1)).all()
            assert alpha[0, 3] == 0
    # A larger tau keeps fewer cells in B_k, so alpha can only drop.
    assert (trace_back(Rs, D, Phi, tau=0.5) <= trace_back(Rs, D, Phi, tau=0.1) + 1e-12).all()
    # Nothing anywhere: denominator 0 -> alpha 0, no NaN.
    zeros = torch.zeros(1, 2, 3, 4)
    assert torch.equal(trace_back_from_maps(zeros, zeros, normalize=True), torch.zeros(1, 2))


def test_contributions_decompose_phi_at_the_predicted_centre():
    g = torch.Generator().manual_seed(6)
    num_templates, grid = 6, (6, 24)
    Rs = torch.rand(3, num_templates, *grid, generator=g, dtype=torch.float64)
    D = random_spatial_templates(num_templates, (11, 47), g)
    Phi = vote(Rs, D)
    _, centre = soft_argmax(Phi, torch.tensor(-1.0))
    index = nearest_cell_index(centre, grid)
    c = contributions(Rs, D, index)
    assert torch.allclose(c.sum(dim=1), Phi.reshape(3, -1)[torch.arange(3), index], rtol=1e-12)
    for r in range(3):  # each c_k against scipy's own vote of primitive k
        row, col = divmod(index[r].item(), grid[1])
        for k in range(num_templates):
            phi_k = convolve2d(Rs[r, k].numpy(), D[k].numpy(), mode="same")
            assert c[r, k].item() == pytest.approx(phi_k[row, col] / num_templates, rel=1e-10)
    c_bilinear = contributions_bilinear(Rs, D, centre)
    assert torch.allclose(c_bilinear.sum(dim=1), interpolate_bilinear(Phi, centre), rtol=1e-12)


# ---------------------------------------------------------------- heatmap target and loss


def test_gaussian_heatmap_target_matches_formula_with_unit_mass():
    centre = torch.tensor([[5.25, 2.0]], dtype=torch.float64)
    target = gaussian_heatmap_target(centre, (4, 8), (2.0, 0.5))[0]
    rows, cols = np.mgrid[0:4, 0:8] + 0.5
    density = np.exp(-0.5 * (((cols - 5.25) / 2.0) ** 2 + ((rows - 2.0) / 0.5) ** 2))
    np.testing.assert_allclose(target.numpy(), density / density.sum(), rtol=1e-10)
    far = gaussian_heatmap_target(torch.tensor([[500.0, -300.0]]), (4, 8), (1.0, 1.0))
    assert torch.isfinite(far).all() and far[0].sum().item() == pytest.approx(1.0)


def test_heatmap_loss_is_kl_divergence():
    n = 4 * 8
    p = torch.full((2, 4, 8), 1.0 / n)
    target = torch.zeros(2, 4, 8)
    target[:, 1, 3] = 1.0
    assert heatmap_loss(p, target, eps=0.0).item() == pytest.approx(math.log(n))  # one-hot: KL = CE
    # a two-cell target (0.5, 0.5) against p = (0.25, 0.75) there: KL = 0.5 ln 2 + 0.5 ln(2/3)
    target2, p2 = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    target2[0, 0, :] = 0.5
    p2[0, 0, 0], p2[0, 0, 1] = 0.25, 0.75
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert heatmap_loss(p2, target2, eps=0.0).item() == pytest.approx(expected)
    assert heatmap_loss(target2, target2, eps=0.0).item() == pytest.approx(0.0, abs=1e-7)  # perfect fit
    empty = torch.zeros(0, 4, 8, requires_grad=True)
    assert heatmap_loss(empty, empty.detach()).item() == 0.0


# ---------------------------------------------------------------- the module


def test_primitive_voting_forward_explain_and_init():
    torch.manual_seed(0)
    module = PrimitiveVoting(in_channels=16, num_primitives=8, grid_size=(6, 24))
    D = module.spatial_templates()
    assert D.shape == (8, 11, 47)
    assert D[0].reshape(-1).argmax().item() == 5 * 47 + 23  # centred Gaussian start
    assert torch.allclose(module.semantic_templates.norm(dim=1), torch.ones(8), atol=1e-5)
    gamma = torch.randn(5, 16, 6, 24)
    gamma[4] = 0  # outside the fan
    out = module(gamma)
    assert out["response_maps"].shape == (5, 8, 6, 24)
    assert out["vote_heatmap"].shape == out["probabilities"].shape == (5, 6, 24)
    assert out["centre_cells"].shape == (5, 2)
    assert all(torch.isfinite(v).all() for v in out.values())
    explanation = module.explain(out, tau=0.1)
    assert explanation["alpha"].shape == explanation["contributions"].shape == (5, 8)
    assert explanation["reconstruction"].shape == explanation["primitive_votes"].shape == (5, 8, 6, 24)
    index = nearest_cell_index(out["centre_cells"], (6, 24))
    phi_at_centre = out["vote_heatmap"].reshape(5, -1)[torch.arange(5), index]
    assert torch.allclose(explanation["contributions"].sum(dim=1), phi_at_centre, atol=1e-6)
    small = PrimitiveVoting(16, 8, (6, 24), spatial_template_size=(5, 9))
    assert small.spatial_templates().shape == (8, 5, 9)
    with pytest.raises(ValueError, match="odd"):
        PrimitiveVoting(16, 8, (6, 24), spatial_template_size=(4, 9))


def test_gradients_reach_all_parameters_through_the_centre():
    torch.manual_seed(1)
    module = PrimitiveVoting(in_channels=8, num_primitives=4, grid_size=(6, 24))
    gamma = torch.randn(3, 8, 6, 24)
    out = module(gamma)
    target = torch.tensor([[18.0, 1.5]])
    loss = (out["centre_cells"] - target).square().sum()
    loss.backward()
    for name in ("semantic_templates", "spatial_template_logits", "log_temperature"):
        grad = getattr(module, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name


def test_kmeans_recovers_well_separated_directions():
    g = torch.Generator().manual_seed(7)
    directions = torch.linalg.qr(torch.randn(16, 16, generator=g))[0][:4]  # 4 orthonormal directions
    points = directions.repeat_interleave(50, dim=0) * 3 + 0.1 * torch.randn(200, 16, generator=g)
    centres = kmeans_semantic_templates(points, 4, seed=0)
    assert torch.allclose(centres.norm(dim=1), torch.ones(4), atol=1e-5)
    best = (centres @ directions.T).max(dim=0).values
    assert (best > 0.99).all()
    module = PrimitiveVoting(16, 4, (3, 4))
    module.init_semantic_templates_kmeans(points, seed=0)
    assert torch.allclose(module.semantic_templates.data, centres)
    with pytest.raises(ValueError, match="at least"):
        kmeans_semantic_templates(points[:3], 4)
