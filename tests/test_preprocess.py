"""Reference-image preprocessing: output size, resize to cover (torchvision's uint8 path), centre crop."""
import math

import numpy as np
import pytest
from PIL import Image

from mimicmotion.errors import ConfigError, MimicMotionError
from mimicmotion.preprocess import (
    cover_crop_geometry,
    load_reference,
    output_size,
    read_rgb_image,
    resize_cover_crop,
)


# ------------------------------------------------------------------------------------------- sizes
def test_output_size_portrait_like_the_sample_reference():
    assert output_size(1216, 704) == (1024, 576)  # ref.png: 704 wide x 1216 high


def test_output_size_landscape_and_square():
    assert output_size(704, 1216) == (576, 1024)
    assert output_size(500, 500) == (576, 1024)  # square counts as landscape, as in the release


def test_output_size_other_resolution_uses_the_release_formula():
    # int(512 / (9/16) // 64) * 64 = int(910.2 // 64) * 64 = 14 * 64
    assert output_size(900, 600, resolution=512) == (896, 512)


@pytest.mark.parametrize("args", [(0, 10), (10, -1), (10, 10, 0), (10, 10, 20)])
def test_output_size_rejects_bad_values(args):
    with pytest.raises(ConfigError):
        output_size(*args)


def test_cover_geometry_for_the_sample_reference():
    # 1216/704 < 1024/576, so the height is matched: width ceil(1024 * 704 / 1216) = ceil(592.8) = 593,
    # crop offset round(17 / 2) = round(8.5) = 8 (Python rounds half to even).
    assert cover_crop_geometry(1216, 704, 1024, 576) == ((1024, 593), (0, 8))


def test_cover_geometry_crop_offsets_round_half_to_even():
    assert cover_crop_geometry(4, 5, 4, 4) == ((4, 5), (0, 0))  # round(0.5) = 0
    assert cover_crop_geometry(4, 7, 4, 4) == ((4, 7), (0, 2))  # round(1.5) = 2
    assert cover_crop_geometry(9, 4, 4, 4) == ((9, 4), (2, 0))  # round(2.5) = 2


def test_cover_geometry_rounds_the_covering_side_up():
    # 1024 / (1200 / 700) = 597.33 -> 598 (math.ceil), then crop (598 - 576) / 2 = 11
    assert cover_crop_geometry(1200, 700, 1024, 576) == ((1024, 598), (0, 11))
    # 700/1250 < 576/1024: the height is matched, width ceil(576 / 0.56) = ceil(1028.57) = 1029, crop round(2.5) = 2
    assert cover_crop_geometry(700, 1250, 576, 1024) == ((576, 1029), (0, 2))


def test_cover_geometry_landscape_target():
    (h, w), (top, left) = cover_crop_geometry(1080, 1920, 576, 1024)
    assert (h, w) == (math.ceil(1024 * (1080 / 1920)), 1024) == (576, 1024)
    assert (top, left) == (0, 0)


# ------------------------------------------------------------------------------------------ resize
def test_upscale_matches_hand_computed_bilinear_with_half_to_even_rounding():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0] = [[10, 12], [20, 22]]
    image[..., 1] = [[0, 255], [255, 0]]
    image[..., 2] = 7
    out = resize_cover_crop(image, 4, 4)
    # Half-pixel centres: the 4 output samples per axis read source 0, 0.25, 0.75, 1 (edges clamped),
    # i.e. rows [10, 10.5, 11.5, 12], [12.5, 13, 14, 14.5], [17.5, 18, 19, 19.5], [20, 20.5, 21.5, 22],
    # rounded half to even as torch.round does.
    assert out[..., 0].tolist() == [[10, 10, 12, 12], [12, 13, 14, 14], [18, 18, 19, 20], [20, 20, 22, 22]]
    # channel 1: [0, 63.75, 191.25, 255] on row 0; row 1 = 0.75 * row0 + 0.25 * row3, ...
    assert out[..., 1].tolist() == [
        [0, 64, 191, 255], [64, 96, 159, 191], [191, 159, 96, 64], [255, 191, 64, 0]
    ]
    assert (out[..., 2] == 7).all()
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]


def bilinear_reference(image, out_h, out_w):
    """Independent float64 half-pixel-centre bilinear resize (no antialias), not rounded."""
    in_h, in_w = image.shape[:2]

    def taps(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, fr = taps(out_h, in_h)
    c0, c1, fc = taps(out_w, in_w)
    img = image.astype(np.float64)
    top = img[r0][:, c0] * (1 - fc)[None, :, None] + img[r0][:, c1] * fc[None, :, None]
    bottom = img[r1][:, c0] * (1 - fc)[None, :, None] + img[r1][:, c1] * fc[None, :, None]
    return top * (1 - fr)[:, None, None] + bottom * fr[:, None, None]


def test_downscale_and_crop_match_independent_bilinear():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:19, 0:13]
    image = np.stack([(xx * 17) % 256, (yy * 11) % 256, rng.integers(0, 256, (19, 13))], -1).astype(np.uint8)
    out = resize_cover_crop(image, 8, 6)
    (h, w), (top, left) = cover_crop_geometry(19, 13, 8, 6)
    assert (h, w) == (9, 6) and (top, left) == (0, 0)  # 19/13 > 8/6: width matched, height ceil(8.77) = 9
    ref = bilinear_reference(image, h, w)[top:top + 8, left:left + 6]
    assert out.shape == (8, 6, 3)
    # float32 (torch) vs float64 (reference) can only disagree right at a .5 tie
    clear = np.abs(ref - np.floor(ref) - 0.5) > 1e-3
    np.testing.assert_array_equal(out[clear], np.round(ref)[clear].astype(np.uint8))
    assert np.abs(out.astype(float) - ref).max() <= 0.5 + 1e-3


def test_crop_only_when_no_resize_is_needed():
    image = np.arange(2 * 6 * 3, dtype=np.uint8).reshape(2, 6, 3)
    # 2x6 into 2x3: covering needs width ceil(2 / (2/6)) = 6, i.e. no resize; crop columns 2..4 (round(1.5))
    np.testing.assert_array_equal(resize_cover_crop(image, 2, 3), image[:, 2:5])


def test_resize_rejects_non_uint8():
    with pytest.raises(ConfigError):
        resize_cover_crop(np.zeros((4, 4, 3), np.float32), 2, 2)


# ------------------------------------------------------------------------------------------- files
def test_load_reference_converts_to_rgb_and_sizes(tmp_path):
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10  # alpha is dropped, not composited (PIL convert("RGB"), as the release)
    path = tmp_path / "person.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image, size = load_reference(path, resolution=64)
    assert size == (int(64 / (9 / 16) // 64) * 64, 64) == (64, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 200).all() and not image[..., 1:].any()


def test_load_reference_missing_file(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ConfigError, match="nope.png"):
        load_reference(missing)


def test_load_reference_not_an_image(tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    with pytest.raises(ConfigError, match="notes.png.*not a readable image") as info:
        read_rgb_image(bogus)
    assert isinstance(info.value, MimicMotionError)


def test_sample_reference_image(shared_assets):
    image, size = load_reference(shared_assets / "ref.png")
    assert size == (1024, 576)
    assert image.shape == (1024, 576, 3) and image.dtype == np.uint8
    raw = read_rgb_image(shared_assets / "ref.png")
    assert raw.shape == (1216, 704, 3)
    np.testing.assert_array_equal(image, resize_cover_crop(raw, 1024, 576))
