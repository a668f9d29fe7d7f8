import pytest
import torch

from mimicmotion.errors import ConfigError
from mimicmotion.tiling import fuse_tile_outputs, tile_plan, tile_weights


def starts(tiles):
    return [t[1] for t in tiles]


def test_release_plan_150_72_6():
    tiles = tile_plan(150, 72, 6)
    assert starts(tiles) == [1, 67, 79]
    assert all(t[0] == 0 and len(t) == 72 for t in tiles)
    assert tiles[0] == list(range(72))
    assert tiles[1] == [0, *range(67, 138)]
    assert tiles[2] == [0, *range(79, 150)]


def test_plan_exact_fit_has_no_extra_tile():
    # F = T + k*(T-O): the regular tiles end exactly at F-1.
    tiles = tile_plan(16 + 12 * 2, 16, 4)
    assert starts(tiles) == [1, 13, 25]
    assert tiles[-1][-1] == 39


def test_plan_f_equals_t_is_one_tile():
    assert tile_plan(72, 72, 6) == [list(range(72))]


def test_plan_f_below_t_is_one_short_tile():
    assert tile_plan(10, 72, 6) == [list(range(10))]
    assert tile_plan(1, 16, 4) == [[0]]


def test_every_frame_covered_and_reference_everywhere():
    for f in range(1, 200, 7):
        tiles = tile_plan(f, 16, 4)
        covered = sorted({i for t in tiles for i in t})
        assert covered == list(range(f))
        assert all(t[0] == 0 for t in tiles)


@pytest.mark.parametrize("args", [(0, 16, 4), (10, 1, 0), (10, 16, 16), (10, 16, 15), (10, 16, -1)])
def test_invalid_tiling_is_a_config_error(args):
    with pytest.raises(ConfigError):
        tile_plan(*args)


def test_weights_are_triangular_exact():
    w = tile_weights(4)
    assert w.dtype == torch.float32
    assert w.tolist() == [0.25, 0.75, 0.75, 0.25]
    w = tile_weights(5)
    assert torch.allclose(w, torch.tensor([0.2, 0.6, 1.0, 0.6, 0.2]))
    assert tile_weights(72).max().item() == pytest.approx(71 / 72)


def test_fusion_weighted_average_by_hand():
    # F=5, T=3, O=1: tiles [0,1,2], [0,3,4]; weights [1/3, 1, 1/3].
    tiles = tile_plan(5, 3, 1)
    assert tiles == [[0, 1, 2], [0, 3, 4]]
    w = tile_weights(3)
    a = torch.full((1, 3, 1, 1, 1), 3.0)
    b = torch.full((1, 3, 1, 1, 1), 6.0)
    fused = fuse_tile_outputs([a, b], tiles, w, 5).flatten().tolist()
    # frame 0 is in both tiles at position 0 (weight 1/3 each) -> mean 4.5; others come from one tile.
    assert fused == pytest.approx([4.5, 3.0, 3.0, 6.0, 6.0])


def test_fusion_overlap_blends_by_position():
    # F=6, T=4, O=2: tiles [0,1,2,3] and [0,3,4,5]; frame 3 is position 3 (w .25) then position 1 (w .75).
    tiles = tile_plan(6, 4, 2)
    assert tiles == [[0, 1, 2, 3], [0, 3, 4, 5]]
    a = torch.zeros((1, 4, 1, 1, 1))
    b = torch.ones((1, 4, 1, 1, 1))
    fused = fuse_tile_outputs([a, b], tiles, tile_weights(4), 6).flatten().tolist()
    assert fused == pytest.approx([0.5, 0.0, 0.0, 0.75, 1.0, 1.0])


def test_single_tile_fusion_is_identity():
    out = torch.randn(2, 7, 4, 3, 3)
    fused = fuse_tile_outputs([out], tile_plan(7, 16, 4), tile_weights(7), 7)
    assert torch.allclose(fused, out, atol=1e-6)


def test_segment_boundaries_are_where_tile_cover_changes():
    from mimicmotion.tiling import segment_boundaries

    tiles = tile_plan(12, 8, 2)  # [0..7], [0, 5..11]
    # frames 5-7 are in both tiles: cover changes entering frame 5 and leaving 7
    assert segment_boundaries(tiles, 12) == [5, 8]
    assert segment_boundaries(tile_plan(8, 8, 2), 8) == []


def test_blend_segments_weights_overlap_triangularly():
    import numpy as np

    from mimicmotion.tiling import blend_segments, tile_weights

    tiles = tile_plan(12, 8, 2)
    a = np.full((8, 1, 1, 1), 10.0)
    b = np.full((8, 1, 1, 1), 20.0)
    out = blend_segments([a, b], tiles, 12)[:, 0, 0, 0]
    w = tile_weights(8).double().numpy()
    assert out[1] == 10.0 and out[11] == 20.0
    # frame 6: position 6 in tile 0, position 2 in tile 1
    assert out[6] == pytest.approx((10 * w[6] + 20 * w[2]) / (w[6] + w[2]))
    # frame 0 (the reference) is in both tiles at position 0
    assert out[0] == pytest.approx(15.0)
    with pytest.raises(ConfigError):
        blend_segments([a[:3], b], tiles, 12)
