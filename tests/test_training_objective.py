"""Exact tests for the training objective's pure parts (mimicmotion/training/objective.py)."""
import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from mimicmotion.errors import ConfigError, PoseError
from mimicmotion.pose.layout import LEFT_HAND, NUM_POINTS, RIGHT_HAND
from mimicmotion.tiny import SVD_XT_SCHEDULER_CONFIG
from mimicmotion.training.objective import (
    add_noise,
    apply_condition_dropout,
    assemble_clip,
    augment_condition,
    condition_dropout_masks,
    denoised,
    diffusion_loss,
    edm_preconditioning,
    hand_region_mask,
    loss_weighting,
    loss_weights,
    sample_sigmas,
    unet_input,
)

# Frame 64 x 48 px -> latent 8 x 6 cells of 8 x 8 px. x / 64 is exact in binary.
W, H, LW, LH = 64, 48, 8, 6


def person():
    """One person with no located point (NaN, score 0), as the layout stores missing points."""
    p = np.zeros((NUM_POINTS, 3))
    p[:, :2] = np.nan
    return p


def put_hand(p, hand, xs, ys, score, width=W, height=H):
    """Place the 21 points of ``hand`` spread over pixel ranges ``xs`` x ``ys`` (corners included)."""
    n = hand.stop - hand.start
    px = np.linspace(xs[0], xs[1], n)
    py = np.concatenate([[ys[0], ys[1]], np.full(n - 2, (ys[0] + ys[1]) / 2)])
    p[hand, 0] = px / width
    p[hand, 1] = py / height
    p[hand, 2] = score
    return p


def cells(mask):
    """The set of (frame, row, col) marked in a (F, 1, h, w) mask; also checks it is 0/1."""
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    return {(f, r, c) for f, _, r, c in torch.nonzero(mask).tolist()}


def block(f, rows, cols):
    return {(f, r, c) for r in range(rows[0], rows[1] + 1) for c in range(cols[0], cols[1] + 1)}


def mask_of(frames, **kw):
    return hand_region_mask(frames, H, W, LH, LW, **kw)


# ---------------------------------------------------------------- hand mask


def test_confident_hand_is_marked_exactly_on_its_cells():
    # box x 10..20 px -> cols 1..2; y 18..26 px -> rows 2..3 (no margin)
    frame = put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.9)[None]
    mask = mask_of([frame], margin=0.0)
    assert mask.shape == (1, 1, LH, LW) and mask.dtype == torch.float32
    assert cells(mask) == block(0, (2, 3), (1, 2))


def test_low_confidence_hand_is_not_marked():
    frame = put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.2)[None]
    assert cells(mask_of([frame], margin=0.0)) == set()


def test_threshold_is_strict_and_configurable():
    frame = put_hand(person(), RIGHT_HAND, (10, 20), (18, 26), 0.6)[None]
    assert cells(mask_of([frame], margin=0.0)) == set()  # 0.6 is not above 0.6
    assert cells(mask_of([frame], margin=0.0, threshold=0.5)) == block(0, (2, 3), (1, 2))


def test_margin_grows_the_box_by_a_fraction_of_the_hand_size():
    # box 10 x 8 px, longer side 10; margin 0.5 -> 5 px: x 5..25 -> cols 0..3, y 13..31 -> rows 1..3
    frame = put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.9)[None]
    assert cells(mask_of([frame], margin=0.5)) == block(0, (1, 3), (0, 3))
    # a thin hand grows by a fraction of its LONGER side: box 2 x 20 px (x 30..32, y 8..28), 10 px margin:
    # x 20..42 -> cols 2..5, y -2..38 -> rows 0..4 (clipped at the top)
    thin = put_hand(person(), LEFT_HAND, (30, 32), (8, 28), 0.9)[None]
    assert cells(mask_of([thin], margin=0.5)) == block(0, (0, 4), (2, 5))


def test_default_margin_is_a_fifth_of_the_hand_size():
    # 64 x 64 frame, 8 x 8 latent. Box x 16..36, y 20..30 (longer side 20) grows by exactly 4 px:
    # x 12..40 -> cols 1..5 (40 is the first pixel of col 5: any smaller margin stops at col 4),
    # y 16..34 -> rows 2..4 (16 is row 2's first pixel: any larger margin reaches row 1).
    frame = put_hand(person(), LEFT_HAND, (16, 36), (20, 30), 0.9, width=64, height=64)[None]
    assert cells(hand_region_mask([frame], 64, 64, 8, 8)) == block(0, (2, 4), (1, 5))
    assert cells(hand_region_mask([frame], 64, 64, 8, 8, margin=0.19)) == block(0, (2, 4), (1, 4))
    assert cells(hand_region_mask([frame], 64, 64, 8, 8, margin=0.21)) == block(0, (1, 4), (1, 5))


def test_min_fraction_counts_reliable_points_and_builds_the_box_from_them_only():
    p = put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.9)
    # 6 of 21 points unreliable and far away (bottom-right cell)
    far = np.arange(LEFT_HAND.start + 15, LEFT_HAND.stop)
    p[far, 0], p[far, 1], p[far, 2] = 60 / W, 44 / H, 0.2
    # the 15 reliable points: x = linspace(10, 20, 21)[:15] -> 10..17, y rows still 18..26
    frames = [p[None]]
    assert cells(mask_of(frames, margin=0.0)) == set()  # default: all 21 must be reliable
    assert cells(mask_of(frames, margin=0.0, min_fraction=0.75)) == set()  # 15/21 = 0.714 < 0.75
    assert cells(mask_of(frames, margin=0.0, min_fraction=0.7)) == block(0, (2, 3), (1, 2))


def test_nan_points_are_ignored():
    p = put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.9)
    # a confident score with no location (corrupt input) and a regular missing point (NaN, score 0)
    p[LEFT_HAND.start + 5, :2] = np.nan
    p[LEFT_HAND.start + 6] = (np.nan, np.nan, 0.0)
    frames = [p[None]]
    assert cells(mask_of(frames, margin=0.0)) == set()  # 19/21 located: not "all"
    assert cells(mask_of(frames, margin=0.0, min_fraction=0.9)) == block(0, (2, 3), (1, 2))


def test_two_hands_and_two_people_union_and_are_judged_separately():
    a = person()
    put_hand(a, LEFT_HAND, (2, 6), (2, 6), 0.9)  # cell (0, 0)
    put_hand(a, RIGHT_HAND, (40, 60), (30, 40), 0.3)  # unreliable: not marked
    b = person()
    put_hand(b, RIGHT_HAND, (50, 60), (34, 46), 0.95)  # cols 6..7, rows 4..5
    put_hand(b, LEFT_HAND, (26, 30), (10, 12), 1.0)  # col 3, row 1
    mask = mask_of([np.stack([a, b])], margin=0.0)
    assert cells(mask) == {(0, 0, 0), (0, 1, 3)} | block(0, (4, 5), (6, 7))


def test_empty_frames_and_per_frame_masks():
    hand = put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.9)[None]
    frames = [np.zeros((0, NUM_POINTS, 3)), hand, [], hand[0]]  # (P,134,3), empty list, (134,3)
    mask = mask_of(frames, margin=0.0)
    assert mask.shape == (4, 1, LH, LW)
    assert cells(mask) == block(1, (2, 3), (1, 2)) | block(3, (2, 3), (1, 2))
    assert mask_of([]).shape == (0, 1, LH, LW)


def test_cell_boundaries_and_frame_edges():
    # Frame 64 x 64, latent 8 x 8. A single reliable point exactly on a cell corner (16, 8) px lies in
    # cell (row 1, col 2): cells are half-open [8j, 8j+8).
    p = person()
    p[LEFT_HAND, 2] = 0.9
    p[LEFT_HAND, 0], p[LEFT_HAND, 1] = 16 / 64, 8 / 64
    m = hand_region_mask([p[None]], 64, 64, 8, 8, margin=0.0)
    assert cells(m) == {(0, 1, 2)}
    # A box reaching past the frame edge is clipped: x -8..4, y 60..70 -> col 0, row 7.
    q = put_hand(person(), LEFT_HAND, (-8, 4), (60, 70), 0.9, width=64, height=64)
    assert cells(hand_region_mask([q[None]], 64, 64, 8, 8, margin=0.0)) == {(0, 7, 0)}
    # Entirely outside: nothing.
    out = put_hand(person(), LEFT_HAND, (70, 80), (10, 20), 0.9, width=64, height=64)
    assert cells(hand_region_mask([out[None]], 64, 64, 8, 8, margin=0.0)) == set()


def test_other_latent_cell_sizes():
    # 64 x 48 frame on a 4 x 3 latent grid: 16 x 16 px cells; box x 10..20 -> cols 0..1, y 18..26 -> row 1
    frame = put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.9)[None]
    assert cells(hand_region_mask([frame], H, W, 3, 4, margin=0.0)) == block(0, (1, 1), (0, 1))


def test_torch_input_dtype_and_device():
    frame = torch.from_numpy(put_hand(person(), LEFT_HAND, (10, 20), (18, 26), 0.9)[None])
    m = mask_of([frame], margin=0.0, dtype=torch.float16, device="cpu")
    assert m.dtype == torch.float16 and cells(m.float()) == block(0, (2, 3), (1, 2))


def test_hand_mask_rejects_bad_input():
    with pytest.raises(PoseError, match="frame 0"):
        mask_of([np.zeros((1, 133, 3))])
    with pytest.raises(ConfigError, match="min_fraction"):
        mask_of([], min_fraction=0.0)
    with pytest.raises(ConfigError, match="margin"):
        mask_of([], margin=-0.1)
    with pytest.raises(ConfigError, match="positive"):
        hand_region_mask([], 0, W, LH, LW)


def test_loss_weights():
    mask = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert torch.equal(loss_weights(mask), torch.tensor([1.0, 10.0, 1.0, 10.0]))
    assert torch.equal(loss_weights(mask, hand_weight=3.0), torch.tensor([1.0, 3.0, 1.0, 3.0]))
    with pytest.raises(ConfigError):
        loss_weights(mask, hand_weight=0.0)


# ---------------------------------------------------------------- EDM noise and preconditioning


def test_sample_sigmas_formula_and_determinism():
    s = sample_sigmas(5, torch.Generator().manual_seed(3))
    n = torch.randn(5, generator=torch.Generator().manual_seed(3))
    assert s.shape == (5,) and s.dtype == torch.float32
    assert torch.allclose(s, torch.exp(1.6 + 0.7 * n), rtol=1e-6)
    assert torch.equal(s, sample_sigmas(5, torch.Generator().manual_seed(3)))
    const = sample_sigmas(3, torch.Generator().manual_seed(0), log_mean=0.5, log_std=0.0, dtype=torch.float64)
    assert torch.equal(const, torch.full((3,), math.exp(0.5), dtype=torch.float64))
    logs = sample_sigmas(20000, torch.Generator().manual_seed(1), log_mean=-1.0, log_std=2.0).log()
    assert abs(logs.mean().item() + 1.0) < 0.05 and abs(logs.std().item() - 2.0) < 0.05
    with pytest.raises(ConfigError):
        sample_sigmas(0)


def test_preconditioning_hand_values():
    sigma = torch.tensor([1.0, math.sqrt(3.0), math.exp(4.0)], dtype=torch.float64)
    c_in, c_skip, c_out, c_noise = edm_preconditioning(sigma)
    e8 = math.exp(8.0)
    assert torch.allclose(c_in, torch.tensor([1 / math.sqrt(2), 0.5, 1 / math.sqrt(e8 + 1)], dtype=torch.float64))
    assert torch.allclose(c_skip, torch.tensor([0.5, 0.25, 1 / (e8 + 1)], dtype=torch.float64))
    assert torch.allclose(c_out, torch.tensor([-1 / math.sqrt(2), -math.sqrt(3) / 2,
                                               -math.exp(4) / math.sqrt(e8 + 1)], dtype=torch.float64))
    assert torch.allclose(c_noise, torch.tensor([0.0, math.log(3) / 8, 1.0], dtype=torch.float64))
    assert torch.allclose(loss_weighting(sigma), torch.tensor([2.0, 4 / 3, (e8 + 1) / e8], dtype=torch.float64))


def test_noise_input_and_denoise_broadcast_per_sample():
    sigma = torch.tensor([1.0, math.sqrt(3.0)])
    latents = torch.zeros(2, 1, 1, 1, 2)
    noise = torch.ones(2, 1, 1, 1, 2)
    noisy = add_noise(latents, noise, sigma)
    assert torch.allclose(noisy.flatten(), torch.tensor([1.0, 1.0, math.sqrt(3), math.sqrt(3)]))
    assert torch.allclose(unet_input(noisy, sigma).flatten(),
                          torch.tensor([1 / math.sqrt(2)] * 2 + [math.sqrt(3) / 2] * 2))
    out = torch.tensor([1.0, 2.0, 1.0, 2.0]).reshape(2, 1, 1, 1, 2)
    # sample 0: -out/sqrt2 + 0.5*1; sample 1: -sqrt3/2*out + 0.25*sqrt3
    want = torch.tensor([-1 / math.sqrt(2) + 0.5, -2 / math.sqrt(2) + 0.5,
                         -math.sqrt(3) / 2 + math.sqrt(3) / 4, -math.sqrt(3) + math.sqrt(3) / 4])
    assert torch.allclose(denoised(out, noisy, sigma).flatten(), want)
    # the v-target (x0 - c_skip * noisy) / c_out is reconstructed exactly
    x0 = torch.randn(2, 3, 4, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = torch.tensor([0.3, 12.0], dtype=torch.float64)
    xt = add_noise(x0, n, s)
    _, c_skip, c_out, _ = edm_preconditioning(s.reshape(2, 1, 1, 1, 1))
    assert torch.allclose(denoised((x0 - c_skip * xt) / c_out, xt, s), x0)


def test_preconditioning_matches_svd_euler_scheduler():
    sched = EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER_CONFIG)
    sched.set_timesteps(6)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 2, 4, 3, 3, generator=gen)
    for i, t in enumerate(sched.timesteps):
        sigma = sched.sigmas[i]
        sigma_next = sched.sigmas[i + 1]
        _, _, _, c_noise = edm_preconditioning(sigma)
        assert torch.allclose(t, c_noise, rtol=1e-6, atol=1e-6)  # the UNet's timestep
        scaled = sched.scale_model_input(sample, t)
        assert torch.allclose(scaled, unet_input(sample, sigma.reshape(1)), rtol=1e-6, atol=1e-6)
        model_output = torch.randn(sample.shape, generator=gen)
        out = sched.step(model_output, t, sample, return_dict=False)
        x0 = denoised(model_output, sample, sigma.reshape(1))
        assert torch.allclose(out[1], x0, rtol=1e-5, atol=1e-5)
        # Euler step with our x0: sample + (sample - x0) / sigma * (sigma_next - sigma)
        assert torch.allclose(out[0], sample + (sample - x0) / sigma * (sigma_next - sigma), rtol=1e-5, atol=1e-5)
        sample = out[0]
    assert sched.sigmas[0] > 600  # the range the sampler covers starts near sigma_max = 700


def test_diffusion_loss_hand_values():
    x0_pred = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 1, 2)
    latents = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 1, 2)
    sigma = torch.tensor([1.0])  # lambda = 2 -> weighted squared errors [2, 8]
    loss, hand = diffusion_loss(x0_pred, latents, sigma)
    assert loss.item() == pytest.approx(5.0) and math.isnan(hand.item())
    weights = loss_weights(torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 1, 2))
    loss, hand = diffusion_loss(x0_pred, latents, sigma, weights)
    assert loss.item() == pytest.approx((20.0 + 8.0) / 2) and hand.item() == pytest.approx(2.0)
    loss, hand = diffusion_loss(x0_pred, latents, sigma, torch.ones_like(weights))
    assert loss.item() == pytest.approx(5.0) and math.isnan(hand.item()) and not math.isnan(loss.item())


def test_diffusion_loss_per_sample_sigma_broadcast_mask_and_gradient():
    # B=2, F=1, C=2, 1x2 latent; mask (B, F, 1, h, w) broadcasts over channels
    x0_pred = torch.ones(2, 1, 2, 1, 2, requires_grad=True)
    latents = torch.zeros(2, 1, 2, 1, 2)
    sigma = torch.tensor([1.0, math.sqrt(3.0)])  # lambda 2 and 4/3
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 1, 1, 2)
    loss, hand = diffusion_loss(x0_pred, latents, sigma, loss_weights(mask))
    # sample 0: channels x [10*2, 2] -> 2 * 22 = 44; sample 1: 4 * 4/3 = 16/3; mean over 8 elements
    assert loss.item() == pytest.approx((44 + 16 / 3) / 8)
    assert hand.item() == pytest.approx(2.0) and not hand.requires_grad
    loss.backward()
    grad = x0_pred.grad
    assert grad[0, 0, :, 0, 0].tolist() == pytest.approx([2 * 20 / 8] * 2)  # d/dx of w*x^2 / 8
    assert grad[1, 0, 0, 0, 0].item() == pytest.approx(2 * (4 / 3) / 8)
    with pytest.raises(ConfigError):
        diffusion_loss(x0_pred, latents[:, :, :1], sigma)


# ---------------------------------------------------------------- conditioning


def test_condition_dropout_exact_partition_on_chosen_draws():
    p = 0.125  # 2p = 0.25, 3p = 0.375, exact in binary
    r = torch.tensor([0.0, 0.124, 0.125, 0.249, 0.25, 0.374, 0.375, 0.9], dtype=torch.float64)
    drop_clip, drop_image = condition_dropout_masks(8, p, r=r)
    assert drop_clip.tolist() == [True, True, True, True, False, False, False, False]
    assert drop_image.tolist() == [False, False, True, True, True, True, False, False]


def test_condition_dropout_seeded_and_rates():
    drop_clip, drop_image = condition_dropout_masks(6, 0.1, torch.Generator().manual_seed(5))
    r = torch.rand(6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(drop_clip, r < 0.2) and torch.equal(drop_image, (r >= 0.1) & (r < 0.3))
    clip, image = condition_dropout_masks(100000, 0.1, torch.Generator().manual_seed(0))
    both = (clip & image).float().mean().item()
    assert abs(clip.float().mean().item() - 0.2) < 0.01 and abs(image.float().mean().item() - 0.2) < 0.01
    assert abs(both - 0.1) < 0.01
    none_clip, none_image = condition_dropout_masks(50, 0.0, torch.Generator().manual_seed(0))
    assert not none_clip.any() and not none_image.any()
    with pytest.raises(ConfigError):
        condition_dropout_masks(4, 0.4)
    with pytest.raises(ConfigError):
        condition_dropout_masks(4, 0.1, r=torch.zeros(3))


def test_apply_condition_dropout_zeroes_only_dropped_samples():
    clip = torch.arange(1.0, 7.0).reshape(3, 1, 2)
    image = torch.full((3, 2, 4, 1, 1), 5.0)
    image[1] = float("nan")
    c, i = apply_condition_dropout(clip, image, torch.tensor([True, False, True]), torch.tensor([False, True, False]))
    assert c.tolist() == [[[0.0, 0.0]], [[3.0, 4.0]], [[0.0, 0.0]]]
    assert torch.equal(i[1], torch.zeros(2, 4, 1, 1))
    assert torch.equal(i[0], image[0]) and torch.equal(i[2], image[2])


def test_augment_condition():
    image = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(1, 2, 3, 4)
    out = augment_condition(image, 0.02, torch.Generator().manual_seed(7))
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert out.dtype == torch.float64 and torch.equal(out, image + 0.02 * noise)
    assert torch.equal(augment_condition(image, 0.0, torch.Generator().manual_seed(7)), image)
    with pytest.raises(ConfigError):
        augment_condition(image, -0.1)


def test_assemble_clip_puts_the_reference_first():
    ref = torch.full((2, 3, 4, 5), -1.0)
    clip = torch.arange(2 * 4 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 4, 3, 4, 5)
    out = assemble_clip(ref, clip)
    assert out.shape == (2, 5, 3, 4, 5)
    assert torch.equal(out[:, 0], ref) and torch.equal(out[:, 1:], clip)
    assert assemble_clip(ref[0], clip[0]).shape == (5, 3, 4, 5)  # unbatched
    with pytest.raises(ConfigError, match="does not fit"):
        assemble_clip(ref[:, :, :2], clip)
    with pytest.raises(ConfigError, match="does not fit"):
        assemble_clip(ref, clip[0])
