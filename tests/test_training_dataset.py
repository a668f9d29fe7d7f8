"""Training dataset from the catalog: clip selection, windows and references, crop + resize of the decoded
frames, pose images and hand masks from the catalog poses, DDP shards, epochs, caching and the errors."""
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog import Catalog, curate_file, init_catalog, rebuild_index
from mimicmotion.curation import CurationSettings, crop_and_resize, sidecar_path, to_crop_coordinates
from mimicmotion.errors import ConfigError, VideoError
from mimicmotion.pose.draw import draw_pose
from mimicmotion.pose.io import PoseSequence, save_poses
from mimicmotion.pose.layout import LEFT_HAND, RIGHT_HAND
from mimicmotion.training import dataset as ds
from mimicmotion.training.dataset import TrainingClips, collate, select_clips, shard_order, window_start
from mimicmotion.training.objective import HAND_CONFIDENCE_THRESHOLD, HAND_MARGIN
from mimicmotion.video import read_frames

SRC_W, SRC_H, FPS = 96, 160, 24.0
W, H = 72, 128  # training size: 9:16 like the crops (90 x 160 source pixels)
F = 4  # frames per window
SETTINGS = CurationSettings(sample_stride=1, clip_length=12, min_clip_length=6)


def dancer(path: Path, num_frames: int, seed: int, left_hand: float, right_hand: float) -> list:
    """A video of the procedural dancer with a sidecar pose file (every frame) whose hand scores are set to
    ``left_hand`` / ``right_hand``; the dancer is narrowed so its hands stay inside a 9:16 crop."""
    from mimicmotion.sample import dance_poses, draw_figure
    from mimicmotion.video import write_video

    poses = [p.astype(np.float64) for p in dance_poses(num_frames, FPS, SRC_W, SRC_H, seed=seed)]
    for p in poses:
        p[..., 0] = 0.5 + (p[..., 0] - 0.5) * 0.5
        p[:, LEFT_HAND, 2] = left_hand
        p[:, RIGHT_HAND, 2] = right_hand
    write_video(path, [draw_figure(p, SRC_H, SRC_W, seed=seed) for p in poses], fps=FPS)
    save_poses(sidecar_path(path), PoseSequence(frames=poses, width=SRC_W, height=SRC_H, fps=FPS,
                                                source_frames=list(range(num_frames)), sample_stride=1))
    return poses


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Two videos: 'hands' (20 frames: clips of 12 + 8; left hand 0.95, right hand 0.2) and 'dim' (18
    frames: clips of 12 + 6; both hands 0.2)."""
    d = tmp_path_factory.mktemp("media")
    root = init_catalog(d / "cat")
    videos = {}
    for name, frames, seed, left, right in (("hands", 20, 1, 0.95, 0.2), ("dim", 18, 2, 0.2, 0.2)):
        path = d / f"{name}.mp4"
        poses = dancer(path, frames, seed, left, right)
        outcome = curate_file(path, root, SETTINGS, pose_source="sidecar")
        assert outcome.status == "ok"
        videos[name] = dict(path=path, poses=poses, clip_ids=outcome.clip_ids)
    rebuild_index(root)
    clips = {c["clip_id"]: c for c in Catalog(root).clips().to_pylist()}
    assert sorted(c["num_frames"] for c in clips.values()) == [6, 8, 12, 12]
    return root, videos, clips


def expected_pose(videos, clips, clip_id, source_frame):
    """The subject's pose at ``source_frame`` mapped into the clip's crop, from the sidecar poses."""
    clip = clips[clip_id]
    video = next(v for v in videos.values() if clip_id in v["clip_ids"])
    crop = (clip["crop_x"], clip["crop_y"], clip["crop_w"], clip["crop_h"])
    return to_crop_coordinates(video["poses"][source_frame], crop, SRC_W, SRC_H), video, crop


def make(root, clip_ids, **kw):
    kw.setdefault("num_frames", F)
    return TrainingClips(root, clip_ids, height=H, width=W, **kw)


# ---------------------------------------------------------------------------------------------- pure parts
def test_shard_order_is_equal_length_disjoint_and_covering():
    for n, world in ((4, 2), (5, 3), (2, 4), (7, 1)):
        shards = [shard_order(n, 3, 1, r, world) for r in range(world)]
        per_rank = -(-n // world)
        assert all(len(s) == per_rank for s in shards)
        flat = np.concatenate(shards)
        assert set(flat.tolist()) == set(range(n))
        if n % world == 0:
            assert len(flat) == n  # disjoint: every item exactly once
    assert shard_order(6, 0, 0, 0, 1).tolist() == shard_order(6, 0, 0, 0, 1).tolist()
    assert {tuple(shard_order(6, 0, e, 0, 1)) for e in range(5)} != {tuple(shard_order(6, 0, 0, 0, 1))}


def test_window_start_covers_every_start():
    rng = np.random.default_rng(0)
    starts = {window_start(rng, 12, 4) for _ in range(400)}
    assert starts == set(range(9))
    assert window_start(rng, 4, 4) == 0


# ---------------------------------------------------------------------------------------------- select_clips
def test_select_clips_named_and_sql(catalog):
    root, videos, clips = catalog
    long_clips = sorted(c for c, row in clips.items() if row["num_frames"] >= 12)
    assert select_clips(root, params={"min_frames": 12}) == long_clips
    assert select_clips(root, "single_person_clips", {"min_frames": 6}) == sorted(clips)
    sql = "SELECT clip_id, num_frames FROM clips WHERE num_frames >= $n ORDER BY num_frames"
    assert select_clips(root, sql=sql, params={"n": 8}) == sorted(c for c, r in clips.items() if r["num_frames"] >= 8)


def test_select_clips_errors(catalog, tmp_path):
    root, _, _ = catalog
    with pytest.raises(ConfigError, match=r"'training_clips' with min_frames=100.*relax"):
        select_clips(root, params={"min_frames": 100})
    with pytest.raises(ConfigError, match="no clip matches the SQL query"):
        select_clips(root, sql="SELECT clip_id FROM clips WHERE num_frames > $n", params={"n": 99})
    with pytest.raises(ConfigError, match="no clip_id"):
        select_clips(root, sql="SELECT num_frames FROM clips")
    with pytest.raises(ConfigError, match="no named query"):
        select_clips(root, "nonsense")
    empty = init_catalog(tmp_path / "empty")
    rebuild_index(empty)
    with pytest.raises(ConfigError, match="has no clips: curate"):
        select_clips(empty)


# ---------------------------------------------------------------------------------------------- items
def test_items_shapes_crop_reference_and_poses(catalog):
    root, videos, clips = catalog
    data = make(root, sorted(clips), seed=5)
    assert len(data) == 4 and data.clip_ids == sorted(clips)
    seen = set()
    for i in range(len(data)):
        item = data[i]
        assert item["pixels"].shape == item["pose_images"].shape == (1 + F, 3, H, W)
        assert item["pixels"].dtype == item["pose_images"].dtype == item["hand_mask"].dtype == torch.float32
        assert item["hand_mask"].shape == (1 + F, 1, H // 8, W // 8)
        assert item["source_frames"].dtype == torch.int64 and item["source_frames"].shape == (1 + F,)
        for key in ("pixels", "pose_images"):
            assert item[key].min() >= -1 and item[key].max() <= 1
        clip_id = item["clip_id"]
        seen.add(clip_id)
        clip = clips[clip_id]
        sources = item["source_frames"].tolist()
        window = sources[1:]
        assert window == list(range(window[0], window[0] + F))  # consecutive sampled frames (stride 1)
        assert clip["source_start_frame"] <= window[0] and window[-1] < clip["source_end_frame"]
        video = next(v for v in videos.values() if clip_id in v["clip_ids"])
        assert 0 <= sources[0] < len(video["poses"])  # the reference: any frame of the same video
        crop = (clip["crop_x"], clip["crop_y"], clip["crop_w"], clip["crop_h"])
        decoded = read_frames(video["path"], sources)
        manual = np.stack([crop_and_resize(f, crop, W, H) for f in decoded])
        expected_pixels = torch.from_numpy(manual).permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(item["pixels"], expected_pixels, rtol=0, atol=0)
        for k, s in enumerate(sources):
            pose, _, _ = expected_pose(videos, clips, clip_id, s)
            image = torch.from_numpy(draw_pose(pose, H, W)).permute(2, 0, 1).float() / 127.5 - 1
            torch.testing.assert_close(item["pose_images"][k], image, rtol=0, atol=0)
    assert seen == set(clips)


def test_reference_first_repeats_the_window_start(catalog):
    root, _, clips = catalog
    random_ref = make(root, sorted(clips), seed=5)
    first = make(root, sorted(clips), seed=5, reference="first")
    for i in range(len(first)):
        a, b = first[i], random_ref[i]
        assert torch.equal(a["pixels"][0], a["pixels"][1]) and torch.equal(a["pose_images"][0], a["pose_images"][1])
        assert torch.equal(a["hand_mask"][0], a["hand_mask"][1])
        assert a["source_frames"][0] == a["source_frames"][1]
        assert a["clip_id"] == b["clip_id"] and torch.equal(a["pixels"][1:], b["pixels"][1:])  # same windows


def test_random_reference_comes_from_the_whole_video(catalog):
    """Over epochs the reference of a clip lands outside the clip (another clip of the video) too, with
    its pose taken from that clip's rows and mapped into this clip's crop."""
    root, videos, clips = catalog
    clip_id = videos["hands"]["clip_ids"][1]  # frames 12..19 of a 20-frame video
    data = make(root, [clip_id], seed=0)
    refs = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        item = data[0]
        ref = int(item["source_frames"][0])
        refs.add(ref)
        if ref < clips[clip_id]["source_start_frame"]:
            pose, _, _ = expected_pose(videos, clips, clip_id, ref)
            image = torch.from_numpy(draw_pose(pose, H, W)).permute(2, 0, 1).float() / 127.5 - 1
            torch.testing.assert_close(item["pose_images"][0], image, rtol=0, atol=0)
    assert min(refs) < clips[clip_id]["source_start_frame"] and len(refs) > 3


def hand_cells(pose, hand):
    """Latent cells (row, col) of a hand's keypoints inside the training frame (a cell is 8 x 8 pixels)."""
    return {(int(y * H // 8), int(x * W // 8)) for x, y in pose[0, hand, :2] if 0 <= x < 1 and 0 <= y < 1}


def test_hand_mask_covers_confident_hands_only(catalog):
    root, videos, clips = catalog
    hands = make(root, videos["hands"]["clip_ids"], seed=1)
    for i in range(len(hands)):
        item = hands[i]
        for k, s in enumerate(item["source_frames"].tolist()):
            pose, _, _ = expected_pose(videos, clips, item["clip_id"], s)
            mask = item["hand_mask"][k, 0]
            left = hand_cells(pose, LEFT_HAND)
            assert all(mask[r, c] == 1 for r, c in left)  # every left-hand keypoint (0.95) is inside
            # The right hand (0.2) adds nothing: cells beyond the left hand's grown box stay 0.
            xs, ys = pose[0, LEFT_HAND, 0] * W, pose[0, LEFT_HAND, 1] * H
            grow = HAND_MARGIN * max(np.ptp(xs), np.ptp(ys))
            rows = range(int((ys.min() - grow) // 8), int((ys.max() + grow) // 8) + 1)
            cols = range(int((xs.min() - grow) // 8), int((xs.max() + grow) // 8) + 1)
            outside = mask.clone()
            outside[max(rows.start, 0):rows.stop, max(cols.start, 0):cols.stop] = 0
            assert outside.sum() == 0
            assert any(mask[r, c] == 0 for r, c in hand_cells(pose, RIGHT_HAND) - left)
    dim = make(root, videos["dim"]["clip_ids"], seed=1)
    assert all(dim[i]["hand_mask"].sum() == 0 for i in range(len(dim)))
    # a 4x VAE's grid: the same hand box rasterised on cells of 4 pixels
    fine = make(root, videos["hands"]["clip_ids"], seed=1, latent_factor=4)
    item, coarse = fine[0], hands[0]
    assert item["hand_mask"].shape == (1 + F, 1, H // 4, W // 4) and torch.equal(item["pixels"], coarse["pixels"])
    pooled = torch.nn.functional.max_pool2d(item["hand_mask"][:, 0], 2)
    assert item["hand_mask"].sum() > 0 and torch.equal(pooled, coarse["hand_mask"][:, 0])
    # The threshold is the caller's: below 0.2 the dim hands count.
    lenient = make(root, videos["dim"]["clip_ids"], seed=1, hand_threshold=0.1)
    assert all(lenient[i]["hand_mask"].sum() > 0 for i in range(len(lenient)))
    assert HAND_CONFIDENCE_THRESHOLD > 0.2


# ---------------------------------------------------------------------------------------------- shards, epochs
def test_shards_seeds_and_epochs(catalog):
    root, _, clips = catalog
    ids = sorted(clips)
    for world in (2, 3):
        shards = [make(root, ids, seed=7, rank=r, world_size=world) for r in range(world)]
        got = [[s[i]["clip_id"] for i in range(len(s))] for s in shards]
        assert {len(g) for g in got} == {-(-len(ids) // world)}
        assert set(sum(got, [])) == set(ids)
        if len(ids) % world == 0:
            assert sorted(sum(got, [])) == ids
    a, b = make(root, ids, seed=7), make(root, ids[::-1], seed=7)  # input order does not matter
    windows = {}
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        items = [a[i] for i in range(len(a))]
        for x, y in zip(items, (b[i] for i in range(len(b)))):
            assert x["clip_id"] == y["clip_id"] and torch.equal(x["pixels"], y["pixels"])
            assert torch.equal(x["source_frames"], y["source_frames"])
        windows[epoch] = {x["clip_id"]: x["source_frames"].tolist() for x in items}
    assert len({str(sorted(w.items())) for w in windows.values()}) > 1  # set_epoch redraws windows
    a.set_epoch(0)
    assert {a[i]["clip_id"]: a[i]["source_frames"].tolist() for i in range(len(a))} == windows[0]
    other_seed = make(root, ids, seed=8)
    assert {other_seed[i]["clip_id"]: other_seed[i]["source_frames"].tolist() for i in range(4)} != windows[0]


def test_clip_fingerprints_name_each_clips_frames_not_the_run(catalog):
    root, _, clips = catalog
    ids = sorted(clips)
    prints = make(root, ids).clip_fingerprints()
    assert sorted(prints) == ids and all(len(v) == 64 for v in prints.values())
    assert len(set(prints.values())) == len(ids)
    # the same whatever the rank, seed, input order or the other clips (a persisted latent cache is shared by
    # the ranks, and read by a later run on more clips)
    assert make(root, ids[::-1], seed=5, rank=1, world_size=2).clip_fingerprints() == prints
    assert make(root, ids[:2]).clip_fingerprints() == {k: prints[k] for k in ids[:2]}
    other_size = TrainingClips(root, ids, num_frames=F, height=2 * H, width=2 * W).clip_fingerprints()
    assert all(other_size[k] != prints[k] for k in ids)  # other pixels: the cache must not mix them


def test_set_epoch_reaches_persistent_workers_and_collate(catalog):
    root, _, clips = catalog
    data = make(root, sorted(clips), seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=1, persistent_workers=True,
                                         collate_fn=collate)
    for epoch in (0, 1):
        data.set_epoch(epoch)
        batches = list(loader)
        assert [b["pixels"].shape for b in batches] == [(2, 1 + F, 3, H, W)] * 2
        assert batches[0]["hand_mask"].shape == (2, 1 + F, 1, H // 8, W // 8)
        assert batches[0]["source_frames"].shape == (2, 1 + F) and isinstance(batches[0]["clip_id"], list)
        direct = [data[i] for i in range(len(data))]
        assert sum((b["clip_id"] for b in batches), []) == [d["clip_id"] for d in direct]
        assert torch.equal(torch.cat([b["source_frames"] for b in batches]),
                           torch.stack([d["source_frames"] for d in direct]))
    with pytest.raises(ConfigError, match="at least one"):
        collate([])


def test_cache_frames_decodes_once(catalog, monkeypatch):
    root, videos, _ = catalog
    ids = videos["hands"]["clip_ids"][:1]
    plain = make(root, ids, seed=2, reference="first")
    cached = make(root, ids, seed=2, reference="first", cache_frames=True)
    calls = []
    real = ds.read_frames
    monkeypatch.setattr(ds, "read_frames", lambda path, idx: calls.append(list(idx)) or real(path, idx))
    first = cached[0]
    again = cached[0]
    assert len(calls) == 1 and calls[0] == sorted(set(first["source_frames"].tolist()))
    expected = plain[0]
    for key in ("pixels", "pose_images", "hand_mask", "source_frames"):
        assert torch.equal(first[key], expected[key]) and torch.equal(again[key], expected[key])


# ---------------------------------------------------------------------------------------------- errors
def test_construction_errors(catalog, caplog):
    root, videos, clips = catalog
    ids = sorted(clips)
    with caplog.at_level(logging.WARNING, logger="mimicmotion.training.dataset"):
        data = make(root, ids, num_frames=7)  # the 6-frame clip is skipped
    six = next(c for c, r in clips.items() if r["num_frames"] == 6)
    assert six in caplog.text and "skipping" in caplog.text and six not in data.clip_ids and len(data) == 3
    with pytest.raises(ConfigError, match="fewer than num_frames=13.*min_frames"):
        make(root, ids, num_frames=13)
    with pytest.raises(ConfigError, match="aspect differs"):
        TrainingClips(root, ids, num_frames=F, height=128, width=96)
    with pytest.raises(ConfigError, match="aspect differs"):
        TrainingClips(root, ids, num_frames=F, height=64, width=40)  # 0.625 vs 0.5625: 11% off
    assert len(TrainingClips(root, ids, num_frames=F, height=240, width=136)) == 4  # 0.567: within 1%
    with pytest.raises(ConfigError, match="not in the catalog.*ffffffffffffffff-0000"):
        make(root, ids + ["ffffffffffffffff-0000"])
    for bad, match in ((dict(height=100), "multiple of 8"), (dict(reference="last"), "reference"),
                       (dict(rank=2, world_size=2), "rank"), (dict(seed=-1), "seed"),
                       (dict(hand_threshold=2.0), "hand_threshold"), (dict(num_frames=0), "num_frames")):
        kw = dict(height=H, width=W, num_frames=F)
        kw.update(bad)
        with pytest.raises(ConfigError, match=match):
            TrainingClips(root, ids, **kw)
    with pytest.raises(ConfigError, match="non-empty"):
        make(root, [])
    with pytest.raises(IndexError):
        make(root, ids)[4]


def test_missing_or_changed_video_names_clip_and_fix(tmp_path):
    root = init_catalog(tmp_path / "cat")
    video = tmp_path / "gone.mp4"
    dancer(video, 8, seed=9, left_hand=0.9, right_hand=0.9)
    outcome = curate_file(video, root, SETTINGS, pose_source="sidecar")
    rebuild_index(root)
    data = make(root, outcome.clip_ids)
    moved = tmp_path / "moved.mp4"
    shutil.move(video, moved)
    with pytest.raises(VideoError, match=rf"{outcome.clip_ids[0]}.*{video}.*missing.*re-curate.*restore"):
        data[0]
    video.write_bytes(moved.read_bytes() + b"\0")
    with pytest.raises(VideoError, match="changed since it was curated"):
        data[0]
