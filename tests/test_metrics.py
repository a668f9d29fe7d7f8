"""Evaluation metrics: PSNR / SSIM / masked PSNR against hand-computed values and slow reference
implementations, the Fréchet distance, and the feature networks (LPIPS, I3D, FID Inception, TorchScript)
built tiny, saved, loaded back and checked."""
import math
import pickle

import numpy as np
import pytest
import torch

from mimicmotion.errors import ConfigError, ModelFileError
from mimicmotion.metrics import (changed_mask, feature_frechet_distance, frechet_distance, gaussian_fit,
                                 gaussian_kernel, masked_psnr, masked_psnr_per_frame, psnr, psnr_per_frame,
                                 region_ssim, ssim, ssim_map, ssim_per_frame)
from mimicmotion.metrics import REGION_NAMES, labelled_ssim_sums, region_labels

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------- slow references
def reference_ssim_image(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Wang et al.'s SSIM written out: every 11x11 window fully inside the image, Gaussian weights
    (sigma 1.5), weighted population moments, per channel, averaged."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, w, channels = x.shape
    per_channel = []
    for c in range(channels):
        values = []
        for i in range(5, h - 5):
            for j in range(5, w - 5):
                px, py = x[i - 5:i + 6, j - 5:j + 6, c], y[i - 5:i + 6, j - 5:j + 6, c]
                mx, my = (w2 * px).sum(), (w2 * py).sum()
                vx, vy = (w2 * (px - mx) ** 2).sum(), (w2 * (py - my) ** 2).sum()
                cov = (w2 * (px - mx) * (py - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def reference_psnr_image(x, y, data_range):
    mse = sum((float(a) - float(b)) ** 2 for a, b in zip(np.ravel(x), np.ravel(y))) / np.size(x)
    return 10 * math.log10(data_range ** 2 / mse)


# ---------------------------------------------------------------------------------------------- PSNR
def test_psnr_hand_computed():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 1] = 10  # one value of 12 off by 10: MSE = 100 / 12
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 * 12 / 100), abs=1e-12)
    # floats in [0, 1] with data_range 1: every value off by 0.1 -> MSE 0.01 -> 20 dB
    assert psnr(np.full((4, 4, 3), 0.5), np.full((4, 4, 3), 0.6), data_range=1.0) == pytest.approx(20.0, abs=1e-9)


def test_psnr_known_noise_and_per_frame_mean():
    base = np.full((3, 16, 16, 3), 100, np.uint8)
    noise = np.where((np.indices((16, 16)).sum(0) % 2 == 0), 5, -5)[None, :, :, None]  # +-5 checkerboard
    noisy = (base.astype(int) + noise * np.array([1, 2, 3])[:, None, None, None]).astype(np.uint8)
    expected = [10 * math.log10(255 ** 2 / (5 * k) ** 2) for k in (1, 2, 3)]  # MSE = (5k)^2 in frame k
    np.testing.assert_allclose(psnr_per_frame(base, noisy), expected, atol=1e-12)
    assert psnr(base, noisy) == pytest.approx(np.mean(expected), abs=1e-12)


def test_psnr_identical_is_inf_and_matches_reference():
    a = RNG.integers(0, 256, (2, 12, 14, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf and np.all(psnr_per_frame(a, a) == math.inf)
    b = RNG.integers(0, 256, a.shape, dtype=np.uint8)
    b[1] = a[1]
    frames = psnr_per_frame(a, b)
    assert frames[0] == pytest.approx(reference_psnr_image(a[0], b[0], 255), abs=1e-10) and frames[1] == math.inf
    assert psnr(a, b) == math.inf  # a mean that includes an identical frame is inf (documented)


def test_masked_psnr_counts_only_masked_pixels():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 30  # inside the mask: all three channels off by 30 -> MSE 900 over the masked pixels
    b[0, 3, 3] = 200  # outside the mask: ignored
    mask = np.zeros((2, 4, 4), bool)
    mask[0, :2, :2] = True  # 4 pixels, one of them off -> MSE = 900 / 4
    frames = masked_psnr_per_frame(a, b, mask)
    assert frames[0] == pytest.approx(10 * math.log10(255 ** 2 * 4 / 900), abs=1e-12) and np.isnan(frames[1])
    assert masked_psnr(a, b, mask) == pytest.approx(frames[0], abs=1e-12)  # empty-mask frames are skipped
    assert math.isnan(masked_psnr(a, b, np.zeros((2, 4, 4), bool)))
    full = np.ones((2, 4, 4), bool)
    np.testing.assert_allclose(masked_psnr_per_frame(a, b, full), psnr_per_frame(a, b))
    with pytest.raises(ConfigError, match="mask shape"):
        masked_psnr(a, b, np.ones((2, 3, 4), bool))
    with pytest.raises(ConfigError, match="boolean"):
        masked_psnr(a, b, np.ones((2, 4, 4), np.uint8))


# ---------------------------------------------------------------------------------------------- SSIM
def test_ssim_identical_is_one():
    a = RNG.integers(0, 256, (2, 16, 20, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_constant_images_hand_computed():
    # No variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1) at every pixel.
    c1 = (0.01 * 255) ** 2
    value = ssim(np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 120, np.uint8))
    assert value == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1), abs=1e-12)


def test_ssim_matches_slow_reference():
    a = RNG.integers(0, 256, (2, 17, 23, 3), dtype=np.uint8)
    b = np.clip(a + RNG.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    frames = ssim_per_frame(a, b)
    for k in range(2):
        assert frames[k] == pytest.approx(reference_ssim_image(a[k], b[k], 255), abs=1e-10)
    assert ssim(a, b) == pytest.approx(frames.mean(), abs=1e-15)
    grey_a, grey_b = a[0, :, :, 0].astype(np.float64) / 255, b[0, :, :, 0].astype(np.float64) / 255
    assert ssim(grey_a, grey_b, data_range=1.0) == pytest.approx(reference_ssim_image(grey_a, grey_b, 1.0), abs=1e-10)


def test_ssim_equals_scikit_image():
    """Values printed by scikit-image 0.26 ``structural_similarity(a, b, data_range=255, channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` for these formula-made images
    (scikit-image is not a dependency; the slow reference above checks the same definition)."""
    i, j, c = np.indices((24, 31, 3))
    a = ((i * 7 + j * 13 + c * 29) % 256).astype(np.uint8)
    b = ((i * i + 3 * j + c * 50 + (i * j) % 17) % 256).astype(np.uint8)
    a2 = np.clip(a.astype(int) + (i * j + c) % 11 - 5, 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(0.11775265032407667, abs=1e-12)
    assert ssim(a, a2) == pytest.approx(0.9937565709282495, abs=1e-12)


def test_ssim_falls_with_noise():
    a = RNG.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8).astype(np.float64)
    scores = [ssim(a, np.clip(a + RNG.normal(0, s, a.shape), 0, 255)) for s in (2, 10, 40)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_changed_mask_marks_what_differs_from_the_reference():
    ref = np.full((4, 5, 3), 100, np.uint8)
    frames = np.repeat(ref[None], 2, axis=0)
    frames[0, 1, 2, 1] = 113  # one channel past the threshold
    frames[1, 3, 4] = 112  # at the threshold: unchanged
    mask = changed_mask(frames, ref, threshold=12)
    assert mask.shape == (2, 4, 5) and mask.sum() == 1 and mask[0, 1, 2]
    with pytest.raises(ConfigError, match="reference"):
        changed_mask(frames, ref[:3], threshold=12)


def test_region_ssim_splits_the_ssim_map():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (2, 24, 20, 3)).astype(np.uint8)
    pred = truth.copy()
    pred[:, :, 10:] = rng.integers(0, 256, (2, 24, 10, 3))  # right half wrong
    mask = np.zeros((2, 24, 20), bool)
    mask[:, :, 13:] = True  # inside the wrong half: windows there see mostly wrong pixels
    inside, outside = region_ssim(pred, truth, mask)
    assert inside < 0.2 and 0.2 < outside < 1
    # by hand from the SSIM map: the masked interior pixels' mean per frame, then over frames
    maps = [np.mean([ssim_map(pred[i, :, :, k].astype(float), truth[i, :, :, k].astype(float))[5:-5, 5:-5]
                     for k in range(3)], axis=0) for i in range(2)]
    assert inside == pytest.approx(np.mean([m[:, 8:].mean() for m in maps]), abs=1e-12)
    assert outside == pytest.approx(np.mean([m[:, :8].mean() for m in maps]), abs=1e-12)
    # no mask: the outside is the whole-frame SSIM, the inside has nothing to score
    inside, outside = region_ssim(pred, truth, np.zeros_like(mask))
    assert math.isnan(inside) and outside == pytest.approx(ssim(pred, truth), abs=1e-12)
    assert region_ssim(truth, truth, mask) == pytest.approx((1.0, 1.0))
    with pytest.raises(ConfigError, match="mask"):
        region_ssim(pred, truth, mask[:, :5])


def test_region_labels_split_static_pixels_by_distance_and_texture():
    ref = np.full((40, 30, 3), 120, np.uint8)
    ref[30:, :, :] = np.where((np.arange(30) // 3) % 2, 90, 150)[None, :, None]  # a striped floor below row 30
    frames = np.repeat(ref[None], 2, axis=0)
    frames[0, 5:8, 4:7] = 200  # something moved in frame 0 only
    labels = region_labels(frames, ref, threshold=12, near=6, texture_std=2.0)
    assert labels.shape == (2, 40, 30) and labels.dtype == np.uint8 and REGION_NAMES[3] == "changed"
    assert (labels[0, 5:8, 4:7] == 3).all() and (labels[0] == 3).sum() == 9
    # near: within 6 pixels (a square) of the changed block, not changed
    near = np.zeros((40, 30), bool)
    near[0:14, 0:13] = True
    near[5:8, 4:7] = False
    assert np.array_equal(labels[0] == 2, near)
    # far: textured where the reference's 11x11 grey std reaches 2 (the stripes and the rows just above them)
    assert (labels[1, 32:, :] == 1).all() and (labels[1, :24, :] == 0).all() and (labels[1, 25:30] == 1).all()
    assert not (labels[1] >= 2).any()
    with pytest.raises(ConfigError, match="near"):
        region_labels(frames, ref, near=-1)


def test_labelled_ssim_sums_pool_the_ssim_map_exactly():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, (3, 24, 20, 3)).astype(np.uint8)
    pred = np.clip(truth + rng.normal(0, 20, truth.shape), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 4, (3, 24, 20)).astype(np.uint8)
    sums, counts = labelled_ssim_sums(pred, truth, labels)
    assert counts.sum() == 3 * 14 * 10 and sums.sum() / counts.sum() == pytest.approx(ssim(pred, truth), abs=1e-12)
    maps = [np.mean([ssim_map(pred[i, :, :, k].astype(float), truth[i, :, :, k].astype(float))[5:-5, 5:-5]
                     for k in range(3)], axis=0) for i in range(3)]
    for label in range(4):
        by_hand = [m[labels[i, 5:-5, 5:-5] == label] for i, m in enumerate(maps)]
        assert counts[label] == sum(len(v) for v in by_hand)
        assert sums[label] == pytest.approx(sum(v.sum() for v in by_hand), abs=1e-9)
    # identical frames: every region scores 1; an absent label has count 0
    sums, counts = labelled_ssim_sums(truth, truth, np.zeros_like(labels))
    assert counts[1:].sum() == 0 and sums[0] == pytest.approx(counts[0])
    with pytest.raises(ConfigError, match="labels"):
        labelled_ssim_sums(pred, truth, labels[:, :5])
    with pytest.raises(ConfigError, match="0..3"):
        labelled_ssim_sums(pred, truth, labels + 1)


def test_gaussian_kernel_is_normalised():
    k = gaussian_kernel()
    assert len(k) == 11 and k.sum() == pytest.approx(1.0) and k[5] == k.max() and np.allclose(k, k[::-1])


def test_bad_inputs_are_config_errors():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ConfigError, match="differ in shape"):
        psnr(a, a[:1])
    with pytest.raises(ConfigError, match="at least 11x11"):
        ssim(a[:, :10], a[:, :10])
    with pytest.raises(ConfigError, match="data_range"):
        psnr(a, a, data_range=0)
    with pytest.raises(ConfigError, match="no frames"):
        psnr(a[:0], a[:0])


# ---------------------------------------------------------------------------------------------- Fréchet distance
def reference_frechet(mu1, s1, mu2, s2) -> float:
    """Textbook formula: tr sqrt(s1 s2) = sum of square roots of the eigenvalues of s1 s2 (non-symmetric)."""
    eig = np.linalg.eigvals(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def test_frechet_one_dimensional_and_diagonal():
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1, abs=1e-12)
    # diagonal: sum over dimensions of the 1-D distances
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 1 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance([0, 0, 1], np.diag(v1), [1, 0, 1], np.diag(v2)) == pytest.approx(expected, abs=1e-12)


def test_frechet_full_covariances_match_reference():
    a = RNG.normal(size=(50, 6))
    b = RNG.normal(size=(40, 6)) @ RNG.normal(size=(6, 6)) + 0.5
    mu1, s1 = gaussian_fit(a)
    mu2, s2 = gaussian_fit(b)
    assert np.allclose(s1, np.cov(a.T)) and np.allclose(mu1, a.mean(0))
    assert feature_frechet_distance(a, b) == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-9)
    assert feature_frechet_distance(a, b) == pytest.approx(feature_frechet_distance(b, a), rel=1e-9)


def test_frechet_identical_shift_and_singular():
    f = RNG.normal(size=(5, 20))  # fewer samples than dimensions: singular covariances
    assert feature_frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    shift = RNG.normal(size=20)
    assert feature_frechet_distance(f, f + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)
    g = RNG.normal(size=(7, 20))
    assert feature_frechet_distance(f, g) == pytest.approx(reference_frechet(*gaussian_fit(f), *gaussian_fit(g)),
                                                           rel=1e-6)
    with pytest.raises(ConfigError, match="N >= 2"):
        gaussian_fit(f[:1])
    with pytest.raises(ConfigError, match="do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ---------------------------------------------------------------------------------------------- feature networks
fn = pytest.importorskip("mimicmotion.feature_nets")


def save_state(module_or_state, path, fmt="safetensors", extra=None):
    state = module_or_state if isinstance(module_or_state, dict) else module_or_state.state_dict()
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    state.update(extra or {})
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def randomize_bn(module, seed=0):
    """Non-trivial BatchNorm statistics so a wrong load would change the output."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """A tiny AlexNet-layout LPIPS saved as the release ships it: torchvision-style backbone file (with a
    classifier to ignore, as a pickle .pth) + lin file (safetensors); non-negative lin weights as LPIPS's."""
    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    net = fn.LPIPSNet("alex", width=0.1).eval()
    with torch.no_grad():
        for k in range(5):
            lin = getattr(net, f"lin{k}").model[1]
            lin.weight.abs_()
    state = net.state_dict()
    backbone = save_state({k: v for k, v in state.items() if k.startswith("features.")}, d / "alexnet.pth", "pth",
                          extra={"classifier.1.weight": torch.zeros(3, 3)})
    lin = save_state({k: v for k, v in state.items() if k.startswith("lin")}, d / "alex_lin.safetensors")
    return net, lin, backbone


def test_lpips_loads_and_behaves(lpips_files):
    net, lin, backbone = lpips_files
    loaded = fn.load_lpips(lin, backbone, net="alex")
    metric = fn.LPIPSMetric(loaded)
    a = RNG.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    b = np.clip(a + RNG.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    c = np.clip(a + RNG.normal(0, 90, a.shape), 0, 255).astype(np.uint8)
    assert np.all(metric.per_frame(a, a) == 0)
    ab, ba = metric.per_frame(a, b), metric.per_frame(b, a)
    np.testing.assert_allclose(ab, ba, rtol=1e-6)
    assert np.all(ab > 0) and metric(a, c) > metric(a, b)
    # Same numbers as the module the files were saved from, and as the formula written out.
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        np.testing.assert_allclose(ab, net(x, y).numpy(), rtol=1e-5)
        fx, fy = net.tap_features(x), net.tap_features(y)
        manual = 0
        for k, (p, q) in enumerate(zip(fx, fy)):
            p = p / (p.norm(dim=1, keepdim=True) + 1e-10)
            q = q / (q.norm(dim=1, keepdim=True) + 1e-10)
            weight = getattr(net, f"lin{k}").model[1].weight[0, :, 0, 0]
            manual = manual + (((p - q) ** 2) * weight[None, :, None, None]).sum(1).mean((1, 2))
    np.testing.assert_allclose(ab, manual.numpy(), rtol=1e-5)


def test_lpips_weight_errors_name_the_file(lpips_files, tmp_path):
    net, lin, backbone = lpips_files
    with pytest.raises(ConfigError, match="not found.*PerceptualSimilarity"):
        fn.load_lpips(tmp_path / "missing.pth", backbone)
    with pytest.raises(ConfigError, match="holds no backbone weights"):
        fn.load_lpips(lin)
    with pytest.raises(ConfigError, match=r"do not fit the network.*missing: lin4"):
        state = {k: v for k, v in net.state_dict().items() if k != "lin4.model.1.weight"}
        fn.load_lpips(save_state(state, tmp_path / "partial.safetensors"))
    with pytest.raises(ConfigError, match="lacks the tensor features.2.weight.*torchvision"):
        fn.load_lpips(lin, backbone, net="vgg")  # AlexNet weights into the VGG layout
    wrong = dict(net.state_dict(), **{"lin1.model.1.weight": torch.ones(1, 3, 1, 1)})
    with pytest.raises(ConfigError, match=r"wrong shape: lin1.model.1.weight"):
        fn.load_lpips(save_state(wrong, tmp_path / "wrong.safetensors"))

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"lin0.model.1.weight": Payload()}, f)
    with pytest.raises(ModelFileError, match="NOT loaded"):
        fn.load_lpips(evil, backbone)


def test_i3d_tiny_roundtrip_and_fvd(tmp_path):
    from mimicmotion.evaluation import FeatureNetworks, clip_features, set_distance

    torch.manual_seed(1)
    net = randomize_bn(fn.InceptionI3d(num_classes=7, width=1 / 16))
    path = save_state(net, tmp_path / "i3d.pth", "pth")
    loaded = fn.load_i3d(path)
    assert loaded.logits.conv3d.out_channels == 7 and loaded.Mixed_5c.out_channels == net.Mixed_5c.out_channels
    extractor = fn.VideoFeatureExtractor(loaded, input_size=64)
    videos = [RNG.integers(0, 256, (12, 40, 30, 3), dtype=np.uint8) for _ in range(3)]
    x = fn.resize_short_side_center_crop(torch.from_numpy(videos[0]).permute(0, 3, 1, 2).float() / 255, 64) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(extractor(videos[0]), net(x.permute(1, 0, 2, 3)[None])[0].double().numpy(),
                                   rtol=1e-5, atol=1e-6)
    nets = FeatureNetworks(fvd=extractor, fvd_window=6)
    feats = [clip_features(v, nets)["fvd"] for v in videos]
    assert all(f.shape == (2, 7) for f in feats)  # 12 frames -> two windows of 6
    assert set_distance(feats, feats) == pytest.approx(0.0, abs=1e-9)
    blurred = [clip_features((v // 64 * 64).astype(np.uint8), nets)["fvd"] for v in videos]
    assert set_distance(blurred, feats) > 0

    state = dict(net.state_dict())
    del state["Mixed_4c.b1b.conv3d.weight"]
    with pytest.raises(ConfigError, match=r"i3d_bad.*lacks the tensor Mixed_4c.b1b.conv3d.weight"):
        fn.load_i3d(save_state(state, tmp_path / "i3d_bad.safetensors"))


def test_fid_inception_tiny_roundtrip(tmp_path):
    torch.manual_seed(2)
    net = randomize_bn(fn.FIDInceptionV3(width=1 / 16))
    fc = {"fc.weight": torch.zeros(5, net.feature_channels), "fc.bias": torch.zeros(5)}  # ignored classifier
    loaded = fn.load_fid_inception(save_state(net, tmp_path / "inception.safetensors", extra=fc))
    extractor = fn.FrameFeatureExtractor(loaded, input_size=96, batch_size=3)
    video = RNG.integers(0, 256, (5, 50, 40, 3), dtype=np.uint8)
    feats = extractor(video)
    assert feats.shape == (5, net.feature_channels)
    x = torch.nn.functional.interpolate(torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255, size=(96, 96),
                                        mode="bilinear", align_corners=False) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(feats, net(x).double().numpy(), rtol=1e-5, atol=1e-6)


class TinyScriptedI3D(torch.nn.Module):
    """StyleGAN-V's TorchScript calling convention on a tiny network."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3, 4))
        out = self.proj(pooled)
        return out if return_features else out.softmax(-1)


def test_torchscript_video_network(tmp_path):
    torch.manual_seed(3)
    module = TinyScriptedI3D().eval()
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    assert fn.is_torchscript(path)
    extractor = fn.load_video_extractor(path, input_size=32)
    video = RNG.integers(0, 256, (8, 40, 30, 3), dtype=np.uint8)
    x = fn.resize_short_side_center_crop(torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255, 32) * 2 - 1
    with torch.no_grad():
        expected = module(x.permute(1, 0, 2, 3)[None], return_features=True)[0].double().numpy()
    np.testing.assert_allclose(extractor(video), expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="TorchScript file, not a state dict"):
        fn.load_i3d(path)


def test_frame_differences_and_seam_ratio():
    from mimicmotion.metrics import frame_differences, seam_ratio

    video = np.zeros((6, 2, 2))
    for t in range(6):
        video[t] = t  # steady motion: 1 per frame
    video[4:] += 3  # a jump entering frame 4
    assert frame_differences(video).tolist() == [1, 1, 1, 4, 1]
    assert seam_ratio(video, [4]) == pytest.approx(4.0)
    assert seam_ratio(video, [2]) == pytest.approx(1 / ((1 + 1 + 4 + 1) / 4))
    with pytest.raises(ConfigError):
        seam_ratio(video, [6])
    with pytest.raises(ConfigError):
        frame_differences(video[:1])
