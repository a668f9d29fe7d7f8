"""benchmarks/demo_continue_gpu.py: its in-memory items are the catalog's (`TrainingClips`) items, its batches
follow TrainingClips' sampling rules, its frame round trip is 4:2:0's, and its weight parts join into the
checkpoint they came from. (The GPU run itself is recorded in benchmarks/RESULTS.md.)"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import demo_continue_gpu as gpu  # noqa: E402


def test_yuv420_round_trip_keeps_flat_colours_and_averages_chroma_detail():
    flat = np.zeros((2, 4, 6, 3), np.uint8)
    flat[0] = (200, 40, 90)
    flat[1] = (10, 250, 130)
    assert np.abs(gpu.yuv420_round_trip(flat).astype(int) - flat).max() <= 2
    # red and blue columns alternate: 4:2:0 keeps the luma edges but shares one chroma per 2 x 2 block
    stripes = np.zeros((1, 8, 8, 3), np.uint8)
    stripes[0, :, 0::2] = (255, 0, 0)
    stripes[0, :, 1::2] = (0, 0, 255)
    out = gpu.yuv420_round_trip(stripes).astype(int)
    red, blue = out[0, 2:6, 2], out[0, 2:6, 3]
    assert (red[:, 0] - red[:, 2]).min() < 120  # no longer pure red: its chroma was averaged with blue's
    assert (red[:, 0] > blue[:, 0]).all()  # the luma difference (red is brighter than blue) stays
    with pytest.raises(ValueError, match="even"):
        gpu.yuv420_round_trip(np.zeros((1, 3, 4, 3), np.uint8))


def _yuv420_reference(frames):
    """The conversion written out whole-array in float64 (BT.601 limited range, chroma rounded after the 2x2
    mean, upsampled bilinearly with OpenCV's half-pixel centres)."""
    import cv2

    x = frames.astype(np.float64)
    n, h, w, _ = x.shape
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = np.round(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255)

    def chroma(c):
        half = np.round(c.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4)))
        return np.stack([cv2.resize(p.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for p in half])

    cb = chroma(128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255)
    cr = chroma(128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255)
    yy, pb, pr = (y - 16) * 255 / 219, (cb - 128) * 255 / 224, (cr - 128) * 255 / 224
    rgb = np.stack([yy + 1.402 * pr, yy - 0.344136 * pb - 0.714136 * pr, yy + 1.772 * pb], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def test_yuv420_round_trip_equals_the_float64_conversion_but_for_rare_half_roundings():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (3, 16, 12, 3), dtype=np.uint8)
    ramps = np.broadcast_to(np.linspace(0, 255, 12)[None, None, :, None], (2, 16, 12, 3)).astype(np.uint8).copy()
    ramps[1] = ramps[1, :, ::-1] // 2 + rng.integers(0, 60, (16, 12, 3), dtype=np.uint8)
    frames = np.concatenate([noise, ramps])
    out, ref = gpu.yuv420_round_trip(frames), _yuv420_reference(frames)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    diff = np.abs(out.astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_weight_parts_stay_under_the_limit_and_join_into_the_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {f"unet.w{i}": torch.full((i + 1, 64), float(i)) for i in range(6)}
    groups = gpu.split_parts(tensors, max_bytes=3 * 64 * 4)
    assert sorted(k for g in groups for k in g) == sorted(tensors)
    for g in groups:
        assert len(g) == 1 or sum(tensors[k].numel() * 4 for k in g) <= 3 * 64 * 4
    paths = []
    for i, g in enumerate(groups):
        paths.append(tmp_path / f"part{i}.safetensors")
        save_file({k: tensors[k] for k in g}, str(paths[-1]))
    merged = load_file(str(gpu.merge_parts(paths, tmp_path / "model.safetensors")))
    assert sorted(merged) == sorted(tensors) and all(torch.equal(merged[k], tensors[k]) for k in tensors)
    with pytest.raises(ValueError, match="repeats"):
        gpu.merge_parts([paths[0], paths[0]], tmp_path / "bad.safetensors")


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """Three procedural videos of the demo's data, written and curated through the catalog as the flow does."""
    from catalog import curate_file, init_catalog, rebuild_index
    from mimicmotion import demo_model as dm
    from mimicmotion.synthetic import generate_dataset

    d = tmp_path_factory.mktemp("continue_gpu")
    manifest = generate_dataset(d / "synth", 3, seed=5, test_fraction=0.0, width=dm.DEMO_WIDTH, height=dm.DEMO_HEIGHT,
                                num_frames=96)
    root = init_catalog(d / "cat")
    for entry in manifest["videos"]:
        assert curate_file(d / "synth" / entry["video"], root, gpu.curation_settings(),
                           pose_source="sidecar").status == "ok"
    rebuild_index(root)
    return root, manifest


def test_in_memory_items_are_the_catalog_s_items(curated):
    from catalog import Catalog
    from mimicmotion.training.dataset import TrainingClips, select_clips

    root, manifest = curated
    ids = select_clips(root, sql="SELECT clip_id FROM clips")
    rows = {r["clip_id"]: r for r in Catalog(root).query(
        "SELECT c.clip_id, c.start_frame, c.end_frame, v.source_path FROM clips c JOIN videos v USING (video_id)"
    ).to_pylist()}
    items = TrainingClips(root, ids, num_frames=7, height=192, width=128, latent_factor=4, seed=1)
    index = {e["video"].split("/")[-1]: e["index"] for e in manifest["videos"]}
    checked = 0
    for n in range(len(items)):
        item = items[n]
        row = rows[item["clip_id"]]
        material = gpu.video_material((5, index[Path(row["source_path"]).name], 96, 24.0, False, 4))
        assert len(material["frame_sets"]) == 1  # the demo's crops are the whole frame
        assert (0, row["start_frame"], row["end_frame"]) in material["clips"]
        fs = material["frame_sets"][0]
        positions = [s // 2 for s in item["source_frames"].tolist()]  # sample stride 2
        assert fs["valid"][positions].all()
        pose = (item["pose_images"].numpy().transpose(0, 2, 3, 1) + 1) * 127.5
        assert np.abs(pose - fs["pose_images"][positions]).max() < 1e-3
        assert np.array_equal(item["hand_mask"].numpy(), fs["hand_masks"][positions])
        frames = (item["pixels"].numpy().transpose(0, 2, 3, 1) + 1) * 127.5  # decoded H.264
        psnr = 10 * np.log10(255 ** 2 / np.mean((frames - fs["frames"][positions]) ** 2))
        assert psnr > 30
        checked += 1
    assert checked == 6  # two clips per video


def test_batches_follow_training_clips_rules():
    rng = np.random.default_rng(0)
    s, h, w = 12, 16, 8

    def material(valid, clips):
        frames = rng.integers(0, 256, (s, h, w, 3), dtype=np.uint8)
        return {"frame_sets": [{"frames": frames, "pose_images": 255 - frames,
                                "hand_masks": np.zeros((s, 1, h // 4, w // 4), np.float32), "valid": valid}],
                "clips": clips}

    valid = np.zeros(s, bool)
    valid[2:12] = True
    materials = [material(valid, [(0, 2, 7), (0, 7, 12)]), material(np.ones(s, bool), [(0, 0, 12), (0, 0, 3)])]
    data = gpu.GpuClips(materials, num_frames=4, device="cpu", seed=0)
    assert len(data) == 3  # the 3-frame clip is too short for 4 frames
    seen = []
    for _ in range(3):
        b = data.batch(1, rng)
        assert b["pixels"].shape == (1, 5, 3, h, w) and b["hand_mask"].shape == (1, 5, 1, h // 4, w // 4)
        assert b["pixels"].min() >= -1 and b["pixels"].max() <= 1
        k = int(b["clip_id"][0][3:])
        ref, *window = b["source_frames"][0].tolist()
        assert window == list(range(window[0], window[0] + 4))
        assert valid[ref] if k == 0 else True
        assert b["clip_id"] == [gpu.GpuClips.set_key(k)]
        expected = torch.from_numpy(materials[k]["frame_sets"][0]["frames"][[ref] + window])
        assert torch.equal(b["pixels"][0], expected.permute(0, 3, 1, 2).float() / 127.5 - 1)
        seen.append((k, window[0]))
    assert data.epoch == 0
    # each clip once per epoch: windows of set 0 start in 2..3 (its first clip) or 7..8 (its second)
    labels = sorted("set1" if k == 1 else ("first" if start in (2, 3) else "second") for k, start in seen)
    assert labels == ["first", "second", "set1"]
    assert all(start in (2, 3, 7, 8) for k, start in seen if k == 0)
    data.batch(1, rng)
    assert data.epoch == 1


def test_script_trains_the_shipped_model_on_and_writes_parts_that_join(tmp_path):
    """The whole script on the CPU, tiny: 2 training videos, 2 steps (what a GPU session runs, shortened)."""
    import csv
    import json

    from safetensors.torch import load_file

    from mimicmotion import demo_model as dm

    out = tmp_path / "stage"
    summary = gpu.main(["--out", str(out), "--videos", "2", "--extra-videos", "0", "--steps", "2", "--batch-size", "1",
                        "--workers", "1", "--device", "cpu", "--part-mib", "8"])
    assert summary["steps"] == 2 and summary["data"]["training_videos"] == 2 and summary["data"]["clips"] == 4
    assert summary["config"]["decay_steps"] == 1 and summary["stopped_early"] is False
    assert json.loads((out / "summary.json").read_text())["parts"] == summary["parts"]
    with open(out / "metrics.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2]
    parts = [out / p for p in summary["parts"]]
    assert len(parts) >= 3 and all(p.stat().st_size < 8 * 2 ** 20 + 2 ** 16 for p in parts)
    merged = load_file(str(gpu.merge_parts(parts, tmp_path / "merged.safetensors")))
    trained = load_file(str(out / "model.safetensors"))
    start = load_file(str(dm.demo_model_paths(dm.SHIPPED_DIR)[1]))
    assert sorted(merged) == sorted(trained) == sorted(start)
    assert all(torch.equal(merged[k], trained[k]) for k in trained)
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # two steps moved the weights


def test_videos_join_while_training_runs():
    """The feed hands videos over in job order as they are rendered; clips added later join the next epoch
    and the device tensors grow past their first capacity."""
    from mimicmotion import demo_model as dm

    jobs = gpu.dataset_jobs(0, 3, 1, 0, num_frames=96, fps=24.0, yuv420=False, latent_factor=4)
    assert [j[:2] for j in jobs] == [(0, 0), (0, 1), (0, 2)]
    feed = gpu.VideoFeed(jobs, workers=1)
    first = feed.wait(1)
    data = gpu.GpuClips(first, num_frames=dm.DEMO_TILE_SIZE - 1, device="cpu", seed=0, capacity=1)
    assert (data.videos, data.sets, len(data)) == (1, 1, 2) and data.frames.shape[0] == 1
    rng = np.random.default_rng(0)
    epoch0 = {data.batch(1, rng)["clip_id"][0] for _ in range(2)}
    assert epoch0 == {gpu.GpuClips.set_key(0)} and data.epoch == 0
    rest = feed.wait(5)  # asks for more than are left: returns the other two
    assert len(rest) == 2 and feed.ready() == [] and feed.per_video() > 0
    for m in rest:
        data.add(m)
    feed.close()
    assert (data.videos, data.sets, len(data)) == (3, 3, 6) and data.frames.shape[0] >= 3
    stored = torch.from_numpy(rest[1]["frame_sets"][0]["frames"])
    assert torch.equal(data.frames[2], stored)  # the grown tensors keep the order the videos came in
    epoch1 = [data.batch(1, rng)["clip_id"][0] for _ in range(6)]
    assert data.epoch == 1 and sorted(epoch1) == sorted([gpu.GpuClips.set_key(k) for k in (0, 0, 1, 1, 2, 2)])


def test_feed_stops_at_the_memory_budget(tmp_path):
    """More videos asked than the device holds: training takes the videos that fit in --data-gib and says so."""
    from mimicmotion import demo_model as dm

    jobs = gpu.dataset_jobs(0, 1, 1, 0, num_frames=dm.DEMO_VIDEO_FRAMES, fps=dm.DEMO_VIDEO_FPS, yuv420=False,
                            latent_factor=4)
    frame_set = gpu.video_material(jobs[0])["frame_sets"][0]
    mib = gpu.frame_set_bytes(frame_set, latent_channels=4) / 2**20
    positions, (h, w) = len(frame_set["valid"]), frame_set["hand_masks"].shape[-2:]
    assert mib * 2**20 == (frame_set["frames"].nbytes * 2 + frame_set["hand_masks"].nbytes
                           + positions * 2 * 4 * h * w * 4)
    summary = gpu.main(["--out", str(tmp_path / "stage"), "--videos", "3", "--extra-videos", "0", "--steps", "1",
                        "--batch-size", "1", "--workers", "1", "--device", "cpu", "--data-gib",
                        str(1.5 * mib / 1024)])
    data = summary["data"]
    assert data["training_videos"] == 1 and data["stopped_at_memory_budget"] is True
    assert data["frame_set_mib"] == round(mib, 2) and summary["steps"] == 1
    with pytest.raises(SystemExit, match="not even one video"):
        gpu.main(["--out", str(tmp_path / "none"), "--videos", "3", "--extra-videos", "0", "--steps", "1",
                  "--workers", "1", "--device", "cpu", "--data-gib", str(0.5 * mib / 1024)])


def test_feed_hands_over_at_most_the_intake_limit():
    """``ready(limit)`` takes at most ``limit`` of the videos that arrived; the rest stay queued for the next call."""
    import time

    jobs = gpu.dataset_jobs(0, 3, 1, 0, num_frames=24, fps=24.0, yuv420=False, latent_factor=4)
    feed = gpu.VideoFeed(jobs, workers=1)
    deadline = time.monotonic() + 120
    while feed._queue.qsize() < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    first, rest = feed.ready(1), feed.ready()
    feed.close()
    assert len(first) == 1 and len(rest) == len(jobs) - 1 and feed.ready() == []
    assert feed.taken == len(jobs) and len(feed.worker_seconds) == len(jobs)
