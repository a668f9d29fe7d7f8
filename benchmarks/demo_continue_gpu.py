"""Train the demo model on, on one GPU, from data made in memory: the stages of the shipped model that ran on a
lent GPU machine (see benchmarks/RESULTS.md). That machine has PyTorch but none of Prefect, Ray, DuckDB or a video
codec, and nothing can be installed there beyond a few carried wheels, so the `demo_model` flow cannot run on it.
This script makes the same training items the flow's curate + train stages make, without files:

    procedural videos (`generate_dataset`'s seeds and split) -> sidecar sampling and clip plans (`sample_sidecar`,
    `plan_clips`, the demo flow's curation settings) -> crops, subject poses in crop coordinates, pose images
    and hand masks (as `TrainingClips`) -> `Trainer.train_step`, the library's training step, unchanged.

What differs from the flow, and why: frames are not written as H.264 and decoded, so by default they go through
a YUV 4:2:0 round trip (BT.601, limited range, as `write_video` stores them) to look like the decoded frames
the evaluation compares against (38 dB from the decoded frames, where the raw renders are 35 dB); the
windows, references and epoch order are drawn from the same distributions as `TrainingClips` (uniform window,
uniform reference among the video's subject frames, every clip once per epoch) but not from its per-clip
seeds; all items sit on the GPU, and every frame's VAE posterior is encoded once, as its video arrives (the
library's `LatentCache`). Rendering the videos (on that machine's CPU cores) is slower than training on them,
so training starts once ``--start-videos`` are there and the rest join, epoch by epoch, as they arrive: which
epoch a video joins depends on timing, so two runs are not identical.

    python benchmarks/demo_continue_gpu.py --start mimicmotion/assets/demo_model --out /tmp/gpu-stage \\
        --extra-videos 2048 --batch-size 16 --deadline-s 500

``--deadline-s`` bounds the whole run: after the first videos and a short timing of the step on a copy of
the model, the number of steps is chosen to end training by then (or give ``--steps``); a run that falls
behind stops there and saves. The learning rate warms up for
``--warmup-steps`` and falls linearly to 0 over the last ``--decay-fraction`` of the steps. Writes into
``--out``: the weights (``model.safetensors``, and the same tensors split into parts under ``--part-mib``
MiB each, for transfers that limit file sizes; `merge_parts` joins them), ``metrics.csv`` (one row per
step, the train flow's columns less max_rss_mb) and ``summary.json`` (data, config, timings, losses).
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if importlib.util.find_spec("av") is None:
    # mimicmotion.video imports PyAV at its top; nothing here reads or writes video, so a machine without
    # PyAV (the GPU machine) gets an empty stand-in rather than an ImportError from curation's import chain.
    # It has a spec (libraries probe packages with find_spec, which fails on a module without one) and no
    # installed distribution, so those probes still find PyAV missing.
    _stand_in = types.ModuleType("av")
    _stand_in.__spec__ = importlib.machinery.ModuleSpec("av", loader=None)
    sys.modules["av"] = _stand_in

CSV_COLUMNS = ("step", "epoch", "loss", "hand_loss", "lr", "grad_norm", "step_time_s", "data_time_s", "samples_per_s",
               "max_memory_mb", "wall_time")


# ----------------------------------------------------------------------------------------------------
# Frames as the H.264 files hold them (pure)

# BT.601 limited range: RGB -> (Y, Cb, Cr) and back, as affine 3 x 4 matrices for cv2.transform.
_TO_YCBCR = np.array([[65.481, 128.553, 24.966, 16 * 255], [-37.797, -74.203, 112.0, 128 * 255],
                      [112.0, -93.786, -18.214, 128 * 255]], np.float32) / 255
_Y_SCALE, _C_SCALE = 255 / 219, 255 / 224
_FROM_YCBCR_LINEAR = np.array([[_Y_SCALE, 0.0, 1.402 * _C_SCALE],
                               [_Y_SCALE, -0.344136 * _C_SCALE, -0.714136 * _C_SCALE],
                               [_Y_SCALE, 1.772 * _C_SCALE, 0.0]], np.float32)
_FROM_YCBCR = np.concatenate([_FROM_YCBCR_LINEAR, -(_FROM_YCBCR_LINEAR @ np.float32([16, 128, 128]))[:, None]], 1)


def yuv420_round_trip(frames: np.ndarray) -> np.ndarray:
    """RGB uint8 (N, H, W, 3) through BT.601 limited-range YUV with 2x2-averaged chroma and back (chroma
    upsampled bilinearly): what storing the frames as yuv420p H.264 does to them, less the codec's own loss.
    Height and width must be even (the demo's 128 x 192 are). Written out because the GPU machine has no PyAV
    (whose ``reformat`` would do it), and OpenCV's I420 conversion is full range. Per frame in float32 with
    OpenCV (a 2x2 INTER_AREA resize is the block mean): ~14x faster than whole-array float64 numpy, and equal
    to it but for one value in ~2.7 million that rounds the other way at a .5."""
    import cv2

    x = np.asarray(frames)
    n, h, w, _ = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420_round_trip needs even frame sizes, got {w}x{h}")
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        ycbcr = cv2.transform(x[i].astype(np.float32), _TO_YCBCR)
        chroma = np.rint(cv2.resize(ycbcr, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
        planes = cv2.resize(chroma, (w, h), interpolation=cv2.INTER_LINEAR)
        planes[..., 0] = np.rint(ycbcr[..., 0])  # luma keeps every pixel
        out[i] = np.clip(np.rint(cv2.transform(planes, _FROM_YCBCR)), 0, 255)
    return out


# ----------------------------------------------------------------------------------------------------
# One video's training material (runs in worker processes)

def curation_settings():
    """The demo_model flow's curation settings."""
    from mimicmotion import demo_model as dm
    from mimicmotion.curation import CurationSettings

    return CurationSettings(**dm.DEMO_CURATION).validate()


def video_material(job: tuple) -> dict:
    """Render video ``index`` of the dataset made with ``seed`` and make what its clips' training items need.

    Returns ``frame_sets``: one per distinct crop of its clips, each ``frames`` and ``pose_images`` uint8
    (S, H, W, 3) over the video's S sampled frames, ``hand_masks`` float32 (S, 1, H/f, W/f) on the latent
    grid (f = ``latent_factor``) and ``valid`` (S,) bool (the frame has a subject pose: a reference
    candidate); ``clips``: (frame set, start, stop) in sampled positions; ``seconds``: the time it took.
    No clips when curation would reject the video."""
    from mimicmotion import demo_model as dm
    from mimicmotion.curation import VideoRejected, crop_and_resize, plan_clips, sample_sidecar, to_crop_coordinates
    from mimicmotion.pose.draw import draw_pose
    from mimicmotion.synthetic.clip import render_clip_detailed, sample_clip
    from mimicmotion.synthetic.dataset import video_seed
    from mimicmotion.training import objective

    started = time.perf_counter()
    seed, index, num_frames, fps, yuv420, latent_factor = job
    width, height = dm.DEMO_WIDTH, dm.DEMO_HEIGHT
    vseed = video_seed(seed, index)
    app, motion = sample_clip(vseed, duration=num_frames / fps)
    clip = render_clip_detailed(app, motion, vseed, width=width, height=height, num_frames=num_frames, fps=fps)
    settings = curation_settings()
    seq = sample_sidecar(clip.poses, fps, settings.sample_stride)
    frames = {src: f for src, f in zip(seq.source_frames, (yuv420_round_trip(clip.frames[seq.source_frames])
                                                            if yuv420 else clip.frames[seq.source_frames]))}
    try:
        plan = plan_clips(seq, settings)
    except VideoRejected:
        return {"frame_sets": [], "clips": [], "seconds": time.perf_counter() - started}
    out_w, out_h = settings.output_size
    subject = {}  # sampled position -> subject's person index (the curated poses table's is_subject rows)
    for c in plan.clips:
        for offset, s in enumerate(c.subjects):
            subject[c.start + offset] = s
    sets, set_of_crop, clips = [], {}, []
    for c in plan.clips:
        if c.crop not in set_of_crop:
            set_of_crop[c.crop] = len(sets)
            n = len(seq.frames)
            images = np.zeros((n, out_h, out_w, 3), np.uint8)
            masks = np.zeros((n, 1, out_h // latent_factor, out_w // latent_factor), np.float32)
            crops = np.stack([crop_and_resize(frames[src], c.crop, out_w, out_h) for src in seq.source_frames])
            valid = np.zeros(n, bool)
            positions = sorted(subject)
            poses = [to_crop_coordinates(np.asarray(seq.frames[p], np.float64)[subject[p]][None], c.crop, seq.width,
                                         seq.height) for p in positions]
            for p, pose in zip(positions, poses):
                images[p] = draw_pose(pose, out_h, out_w)
            masks[positions] = objective.hand_region_mask(poses, out_h, out_w, out_h // latent_factor,
                                                          out_w // latent_factor).numpy()
            valid[positions] = True
            sets.append({"frames": crops, "pose_images": images, "hand_masks": masks, "valid": valid})
        clips.append((set_of_crop[c.crop], c.start, c.stop))
    return {"frame_sets": sets, "clips": clips, "seconds": time.perf_counter() - started}


def one_cv2_thread() -> None:
    """Worker processes draw with one OpenCV (and torch) thread each: the pool already uses every core."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def dataset_jobs(seed: int, videos: int, extra_seed: int, extra_videos: int, num_frames: int, fps: float,
                 yuv420: bool, latent_factor: int, test_fraction: float = 0.2) -> list:
    """The training videos of the demo flow's data: the ``seed`` dataset's train split (its test split is held
    out, as `generate_dataset` splits it) and all ``extra_videos`` of the ``extra_seed`` dataset."""
    from mimicmotion.synthetic.dataset import is_test_video

    base = [(seed, i) for i in range(videos) if not is_test_video(seed, i, test_fraction)]
    extra = [(extra_seed, i) for i in range(extra_videos)]
    return [(s, i, num_frames, fps, yuv420, latent_factor) for s, i in base + extra]


class VideoFeed:
    """``video_material`` of each job, in job order, from ``workers`` processes (one thread here when 1), read in
    the background: ``wait(n)`` blocks until n videos are there and returns them, ``ready(limit)`` returns what
    arrived since (at most ``limit``; the rest stay queued) without waiting. ``close()`` stops the workers
    (videos not yet taken are dropped)."""

    def __init__(self, jobs: list, workers: int):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue()
        self._pool = None
        self._started = time.perf_counter()
        self.seconds = None  # until the last video arrived
        self.worker_seconds: list = []
        if workers > 1:
            import multiprocessing as mp

            self._pool = mp.get_context("fork").Pool(workers, initializer=one_cv2_thread)
            results = self._pool.imap(video_material, jobs, chunksize=2)
        else:
            results = map(video_material, jobs)
        self.total, self.taken = len(jobs), 0

        def read():
            try:
                for material in results:
                    self._queue.put(material)
            except Exception as exc:  # noqa: BLE001 - a worker's failure ends the feed; the main thread raises it
                self._queue.put(exc)
            self.seconds = time.perf_counter() - self._started

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def _take(self, material) -> dict:
        if isinstance(material, Exception):
            raise RuntimeError(f"rendering a training video failed: {material}") from material
        self.taken += 1
        self.worker_seconds.append(material["seconds"])
        return material

    def wait(self, count: int) -> list:
        return [self._take(self._queue.get()) for _ in range(min(count, self.total - self.taken))]

    def ready(self, limit: Optional[int] = None) -> list:
        import queue

        out = []
        while limit is None or len(out) < limit:
            try:
                out.append(self._take(self._queue.get_nowait()))
            except queue.Empty:
                break
        return out

    def per_video(self) -> float:
        """Mean time one worker spent on a video."""
        return float(np.mean(self.worker_seconds)) if self.worker_seconds else float("nan")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


# ----------------------------------------------------------------------------------------------------
# Items on the GPU

class GpuClips:
    """Training clips' frames, pose images and hand masks as device tensors, and batches drawn from them as
    `TrainingClips` draws items (every clip once per epoch in a seeded order; a uniform window of ``num_frames``;
    a uniform reference among the video's subject frames, first in the item).

    Videos can be added while training runs (``add``): an epoch's order covers the clips there at its start, so
    a video that arrives joins at the next epoch. ``capacity``: frame sets to allocate room for up front (the
    tensors grow when more come)."""

    def __init__(self, materials: list, num_frames: int, device, seed: int, capacity: int = 0):
        self.num_frames, self.seed, self.device = num_frames, seed, device
        self.frames = self.pose_images = self.hand_masks = None
        self.sets = 0  # frame sets stored
        self.videos = 0  # videos added (those curation rejects included)
        self.valid: list = []
        self.clips: list = []
        self.positions = 0
        self._capacity = int(capacity)
        self._encoded = 0  # frame sets whose posteriors are in the latent cache
        self.epoch, self._order, self._next = -1, np.zeros(0, np.int64), 0
        for m in materials:
            self.add(m)

    def _allocate(self, template: dict, capacity: int) -> None:
        import torch

        self.positions = len(template["valid"])

        def room(a):
            return torch.zeros((capacity, self.positions) + a.shape[1:], dtype=torch.from_numpy(a[:1]).dtype,
                               device=self.device)

        if self.frames is None:
            self.frames, self.pose_images = room(template["frames"]), room(template["pose_images"])
            self.hand_masks = room(template["hand_masks"])
        else:  # grow: copy what is stored into tensors with room for more
            for name in ("frames", "pose_images", "hand_masks"):
                old = getattr(self, name)
                new = room(template[name])
                new[:self.sets] = old[:self.sets]
                setattr(self, name, new)
        self._capacity = capacity

    def add(self, material: dict) -> None:
        """One video's ``video_material``: its frame sets onto the device, its clips into the next epochs."""
        import torch

        self.videos += 1
        sets = material["frame_sets"]
        if not sets:
            return
        if self.frames is None or self.sets + len(sets) > self.frames.shape[0]:
            self._allocate(sets[0], max(self._capacity, 2 * self.sets, self.sets + len(sets)))
        first = self.sets
        for i, fs in enumerate(sets):
            n = len(fs["valid"])
            if n > self.positions:
                raise ValueError(f"a video has {n} sampled frames, more than the first one's {self.positions}")
            for name in ("frames", "pose_images", "hand_masks"):
                getattr(self, name)[first + i, :n] = torch.from_numpy(fs[name]).to(self.device)
            self.valid.append(np.flatnonzero(fs["valid"]))
        self.sets += len(sets)
        self.clips.extend((first + k, start, stop) for k, start, stop in material["clips"]
                          if stop - start >= self.num_frames)

    def __len__(self) -> int:
        return len(self.clips)

    def order_state(self) -> tuple:
        """Where the epoch order stands (``restore_order`` returns to it)."""
        return self.epoch, self._order, self._next

    def restore_order(self, state: tuple) -> None:
        self.epoch, self._order, self._next = state

    @staticmethod
    def set_key(index: int) -> str:
        return f"set{index:06d}"

    def _draw(self, rng: np.random.Generator) -> tuple:
        if self._next >= len(self._order):
            self.epoch += 1
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.clips))
            self._next = 0
        k, start, stop = self.clips[int(self._order[self._next])]
        self._next += 1
        window = start + int(rng.integers(0, stop - start - self.num_frames + 1))
        reference = int(self.valid[k][int(rng.integers(0, len(self.valid[k])))])
        return k, [reference] + list(range(window, window + self.num_frames))

    def batch(self, size: int, rng: np.random.Generator) -> dict:
        import torch

        draws = [self._draw(rng) for _ in range(size)]
        sets = torch.tensor([[k] * (1 + self.num_frames) for k, _ in draws], device=self.device)
        positions = torch.tensor([p for _, p in draws], device=self.device)

        def images(t):  # uint8 (B, F, H, W, 3) -> float (B, F, 3, H, W) in [-1, 1], as pose_images_to_tensor
            return t[sets, positions].permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0

        return {"pixels": images(self.frames), "pose_images": images(self.pose_images),
                "hand_mask": self.hand_masks[sets, positions], "clip_id": [self.set_key(k) for k, _ in draws],
                "source_frames": torch.tensor([p for _, p in draws], dtype=torch.int64)}

    def encode_new(self, vae, cache, chunk: int = 256) -> int:
        """The VAE posterior of every subject frame added since the last call into ``cache`` (keys as the
        batches name them). Returns how many frames it encoded."""
        import torch

        keys, rows = [], []
        for k in range(self._encoded, self.sets):
            for p in self.valid[k]:
                keys.append((self.set_key(k), int(p)))
                rows.append((k, int(p)))
        self._encoded = self.sets
        with torch.no_grad():
            for i in range(0, len(keys), chunk):
                part = rows[i:i + chunk]
                ks = torch.tensor([k for k, _ in part], device=self.device)
                ps = torch.tensor([p for _, p in part], device=self.device)
                frames = self.frames[ks, ps].permute(0, 3, 1, 2).float() / 127.5 - 1.0
                cache.posteriors(vae, frames, keys[i:i + chunk], chunk)
        return len(keys)


def frame_set_bytes(frame_set: dict, latent_channels: int) -> int:
    """Device bytes one frame set of ``video_material`` takes in `GpuClips` and the latent cache: its frames,
    pose images and hand masks, and a posterior (mean and std, float32, on the masks' latent grid) for each
    of its positions (an upper bound: only subject frames are encoded)."""
    grid = frame_set["hand_masks"].shape[-2:]
    posterior = 2 * latent_channels * int(grid[0]) * int(grid[1]) * 4
    return (frame_set["frames"].nbytes + frame_set["pose_images"].nbytes + frame_set["hand_masks"].nbytes
            + len(frame_set["valid"]) * posterior)


# ----------------------------------------------------------------------------------------------------
# Weights in parts (pure I/O helpers)

def split_parts(tensors: dict, max_bytes: int) -> list:
    """Key groups (in key order) whose tensors together stay under ``max_bytes`` (a tensor larger than that
    gets a group of its own)."""
    groups, current, size = [], [], 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if current and size + nbytes > max_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    if current:
        groups.append(current)
    return groups


def merge_parts(part_paths, out_path) -> Path:
    """Join safetensors parts (disjoint keys) into one checkpoint as `save_checkpoint` writes it."""
    from safetensors.torch import load_file

    from mimicmotion.loading import _atomic_save_safetensors

    tensors: dict = {}
    for path in part_paths:
        part = load_file(str(path))
        overlap = set(part) & set(tensors)
        if overlap:
            raise ValueError(f"{path} repeats {len(overlap)} tensors of an earlier part (e.g. {sorted(overlap)[0]})")
        tensors.update(part)
    return _atomic_save_safetensors(tensors, out_path)


# ----------------------------------------------------------------------------------------------------
# Training

def build(start: Path, config, device):
    from mimicmotion import demo_model as dm
    from mimicmotion.training.trainer import load_components, prepare_modules

    base, checkpoint = dm.demo_model_paths(start)
    return prepare_modules(load_components(base, checkpoint), config, device)


def seconds_per_step(modules, config, data: GpuClips, steps: int = 12, warmup: int = 4) -> float:
    """Median time of a training step on a copy of the model (the real one is left untouched)."""
    import torch

    from mimicmotion.training.trainer import Denoiser, Trainer

    unet, pose_net = copy.deepcopy(modules.unet), copy.deepcopy(modules.pose_net)
    twin = dataclasses.replace(modules, unet=unet, pose_net=pose_net, denoiser=Denoiser(unet, pose_net))
    trainer = Trainer(twin, config)
    order = data.order_state()
    rng = np.random.default_rng(12345)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer.train_step(data.batch(config.batch_size, rng))
        torch.cuda.synchronize() if twin.device.type == "cuda" else None
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    data.restore_order(order)  # the timing's draws leave the real run's epochs as they were
    del trainer, twin, unet, pose_net
    return float(np.median(times))


def main(argv=None) -> dict:
    import torch

    from mimicmotion import demo_model as dm
    from mimicmotion.loading import save_checkpoint
    from mimicmotion.training.trainer import TrainConfig, Trainer

    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default=str(ROOT / "mimicmotion/assets/demo_model"), help="demo model folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0, help="the demo data's seed (its test split is held out)")
    ap.add_argument("--videos", type=int, default=160, help="videos of the --seed dataset (train and test)")
    ap.add_argument("--extra-videos", type=int, default=1024, help="training videos of the --seed + 1 dataset")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--decay-fraction", type=float, default=0.5)
    ap.add_argument("--train-seed", type=int, default=3)
    ap.add_argument("--steps", type=int, help="training steps (default: as many as end by --deadline-s)")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="seconds from the start to the end of training")
    ap.add_argument("--save-s", type=float, default=20.0, help="seconds kept after training for saving")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--no-yuv420", action="store_true", help="train on the raw renders")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--part-mib", type=float, default=15.0)
    ap.add_argument("--start-videos", type=int, default=256,
                    help="videos rendered before training starts (the rest join while it runs)")
    ap.add_argument("--add-every", type=int, default=10, help="steps between taking in newly rendered videos")
    ap.add_argument("--data-gib", type=float,
                    help="device memory the videos may take (frames, pose images, masks, cached posteriors); the "
                         "feed stops at that many (default: 60%% of a GPU's memory; no limit on the CPU)")
    ap.add_argument("--step-margin", type=float, default=1.1,
                    help="the timed step is scaled by this when sizing the run (steps slow while workers render)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    # data, its hand masks on the start model's latent grid: rendered by worker processes while the GPU trains
    # (rendering, not the step, is the slow part), training starting once --start-videos have arrived
    base, _ = dm.demo_model_paths(Path(args.start))
    latent_factor = dm.vae_downscale(json.loads((Path(base) / "vae" / "config.json").read_text()))
    jobs = dataset_jobs(args.seed, args.videos, args.seed + 1, args.extra_videos, num_frames=dm.DEMO_VIDEO_FRAMES,
                        fps=dm.DEMO_VIDEO_FPS, yuv420=not args.no_yuv420, latent_factor=latent_factor)
    feed = VideoFeed(jobs, args.workers)
    config = TrainConfig(**dict(dm.DEMO_TRAIN_CONFIG, batch_size=args.batch_size, lr=args.lr,
                                warmup_steps=args.warmup_steps, seed=args.train_seed, data_workers=0,
                                persist_latent_cache=False, log_every=args.log_every,
                                latent_cache_frames=dm.demo_latent_cache_frames(len(jobs)),
                                steps=max(args.steps or 1, 1))).validate()
    modules = build(Path(args.start), config, device)
    first = feed.wait(min(args.start_videos, len(jobs)))
    # Asking for more videos than the workers render by the deadline costs nothing; more than the device holds
    # would end the run in an out-of-memory error, so the feed stops at the memory budget.
    budget = (args.data_gib * 2**30 if args.data_gib
              else 0.6 * torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None)
    template = next((fs for m in first for fs in m["frame_sets"]), None)
    set_bytes = frame_set_bytes(template, modules.vae.config.latent_channels) if template is not None else 0
    max_sets = int(budget // set_bytes) if budget and set_bytes else None
    if max_sets == 0:
        feed.close()
        raise SystemExit(f"--data-gib {args.data_gib} holds not even one video's frames ({set_bytes / 2**20:.1f} MiB): "
                         "give more")
    data = GpuClips([], config.num_frames, device, args.train_seed,
                    capacity=min(len(jobs), max_sets) if max_sets is not None else len(jobs))
    capped = False

    def take(materials) -> None:
        nonlocal capped
        if capped:
            return
        for material in materials:
            if max_sets is not None and data.sets + len(material["frame_sets"]) > max_sets:
                capped = True
                feed.close()
                print(f"data: the memory budget ({budget / 2**30:.1f} GiB, {set_bytes / 2**20:.1f} MiB a frame set) "
                      f"holds {data.sets} frame sets: training goes on with the {data.videos} videos taken",
                      flush=True)
                return
            data.add(material)

    def timed_encode() -> tuple:
        """(frames encoded, frames a second) of the frame sets added since the last call."""
        started = time.perf_counter()
        frames = data.encode_new(modules.vae, modules.latent_cache)
        return frames, frames / max(time.perf_counter() - started, 1e-6)

    take(first)
    if not data.clips:
        feed.close()
        raise SystemExit(f"no training clip in the first {data.videos} videos: curation rejected them all")
    encoded, encode_rate = timed_encode()
    data_s = time.perf_counter() - t_start
    print(f"data: training starts with {data.videos} of {len(jobs)} videos ({len(data)} clips) after {data_s:.0f} s",
          flush=True)
    step_s = seconds_per_step(modules, config, data) * args.step_margin
    left = args.deadline_s - (time.perf_counter() - t_start) - args.save_s
    steps = args.steps or max(1, int(left / step_s))
    decay = min(steps, int(round(args.decay_fraction * steps)))
    config = dataclasses.replace(config, steps=steps, decay_steps=decay).validate()
    print(f"{step_s * 1000:.1f} ms/step (timed, x {args.step_margin} margin) -> {steps} steps (decay over the last "
          f"{decay})", flush=True)
    # Each intake of new videos is encoded before the next step; it takes at most what encodes in about the
    # time of the steps between intakes (the rate measured again on each large enough intake), so encoding
    # cannot stall training past its deadline (on a GPU that is more than the workers deliver; on a CPU, where
    # encoding is slow, the rest wait in the feed).
    frames_per_video = encoded / max(data.videos, 1)

    def intake_for(rate: float) -> int:
        return max(1, int(args.add_every * step_s * rate / max(frames_per_video, 1)))

    intake = intake_for(encode_rate)

    trainer = Trainer(modules, config)
    rng = np.random.default_rng([args.train_seed, 1])
    metrics_path = out / "metrics.csv"
    losses = []
    with open(metrics_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        t_train = time.perf_counter()
        window_loss = []
        stopped_early = False
        for step in range(1, steps + 1):
            if time.perf_counter() - t_start > args.deadline_s + args.save_s:
                # steps ran slower than timed: stop and save rather than be killed with nothing written
                stopped_early, steps = True, step - 1
                print(f"stopping after {steps} steps: past the deadline", flush=True)
                break
            t0 = time.perf_counter()
            if step % args.add_every == 0:  # videos rendered meanwhile join the next epochs
                take(feed.ready(intake))
                fresh, rate = timed_encode()
                encoded += fresh
                if fresh >= 4 * frames_per_video:  # a rate measured on enough frames replaces the last one
                    encode_rate, intake = rate, intake_for(rate)
            batch = data.batch(config.batch_size, rng)
            t1 = time.perf_counter()
            m = trainer.train_step(batch)
            t2 = time.perf_counter()
            window_loss.append(m["loss"])
            losses.append(m["loss"])
            # the loss is a float already (the step synchronised), so a row per step costs nothing
            writer.writerow(dict(step=step, epoch=data.epoch, loss=m["loss"], hand_loss=m["hand_loss"], lr=m["lr"],
                                 grad_norm=m["grad_norm"], step_time_s=t2 - t1, data_time_s=t1 - t0,
                                 samples_per_s=config.batch_size / max(t2 - t0, 1e-9),
                                 max_memory_mb=(torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                                                else float("nan")), wall_time=time.time()))
            if step % config.log_every == 0 or step == steps:
                fh.flush()
                print(f"step {step}/{steps} loss {np.mean(window_loss):.4f} (last {len(window_loss)}) lr {m['lr']:.2e} "
                      f"epoch {data.epoch} {time.perf_counter() - t_train:.0f} s", flush=True)
                window_loss = []
        train_s = time.perf_counter() - t_train
    feed.close()

    model = save_checkpoint({"unet": modules.unet, "pose_net": modules.pose_net}, out / "model.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model))
    parts = []
    for i, keys in enumerate(split_parts(tensors, int(args.part_mib * 2**20))):
        path = out / f"model.part{i + 1}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(path), metadata={"format": "pt"})
        parts.append(path.name)
    summary = dict(
        data=dict(seed=args.seed, videos=args.videos, extra_seed=args.seed + 1, extra_videos=args.extra_videos,
                  training_videos=data.videos, videos_asked=len(jobs), clips=len(data), yuv420=not args.no_yuv420,
                  start_videos=args.start_videos, seconds_to_start=round(data_s, 1),
                  render_seconds=feed.seconds and round(feed.seconds, 1),
                  seconds_per_video=round(feed.per_video(), 3), workers=args.workers, frames_encoded=encoded,
                  memory_budget_gib=budget and round(budget / 2**30, 2), frame_set_mib=round(set_bytes / 2**20, 2),
                  stopped_at_memory_budget=capped, encode_frames_per_s=round(encode_rate, 1),
                  videos_per_intake=intake),
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()},
        start=str(args.start), device=(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        steps=steps, epochs=data.epoch + 1, step_seconds=round(step_s, 4), train_seconds=round(train_s, 1),
        stopped_early=stopped_early,
        first_loss=round(float(np.mean(losses[:100])), 4), last_loss=round(float(np.mean(losses[-100:])), 4),
        parts=parts, total_seconds=round(time.perf_counter() - t_start, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
