"""Evaluate a model on catalog clips against their ground truth (SPEC section 8's metrics).

For each selected clip: its first frame (the catalog's crop, resized and centre-cropped to the render size
as the release prepares a reference) is the reference, its subject's poses are the driving poses, and the
clip is rendered through ``mimicmotion.render`` (pose images aligned to the reference, then ``generate``).
Frames 1.. of the prediction are scored against frames 1.. of the clip; the reference frame itself is
never scored. Methods:

- ``mimicmotion``: the model.
- ``copy_reference`` (baseline): every predicted frame is the reference.
- ``blank_pose`` (baseline): the same model with every pose image black (nothing drawn), i.e. the pose
  input removed; the difference to ``mimicmotion`` is what the poses contribute.

Per clip and method: SSIM and PSNR (``mimicmotion.metrics``) always, LPIPS when its weights are given. Per
method over all clips: FID-VID and FVD when their networks' weights are given (Fréchet distances between the
predictions' and the ground truth's feature sets; see ``clip_features``). Results: ``clips.parquet`` (one
row per clip and method), ``summary.parquet`` (one row per method), ``summary.md``; written atomically.
Each finished (clip, method) is kept under ``<out>/.work/`` so a killed run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mimicmotion.errors import ConfigError, VideoError
from mimicmotion.pose.io import PoseSequence
from mimicmotion.render import RenderSettings

log = logging.getLogger(__name__)

MODEL_METHOD = "mimicmotion"
BASELINES = ("copy_reference", "blank_pose")
# Not run unless asked: the ground truth through the model's VAE (encode, then decode in the sampler's
# chunks), the ceiling of any model that decodes with that VAE.
OPTIONAL_BASELINES = ("vae_reconstruction",)
KNOWN_BASELINES = BASELINES + OPTIONAL_BASELINES
FID_VID_POOLINGS = ("mean", "frames")
CLIP_COLUMNS = ("clip_id", "method", "num_frames", "ssim", "psnr", "lpips", "seconds")
SUMMARY_COLUMNS = ("method", "clips", "frames", "ssim", "psnr", "lpips", "fid_vid", "fvd")
WORK_DIR = ".work"
# SPEC section 8: the paper's MimicMotion row (TikTok test set), shown next to the results for context.
PUBLISHED = {"fid_vid": 9.3, "fvd": 594.0, "ssim": 0.795, "psnr": 20.1}


@dataclass
class MetricWeights:
    """Weight files of the feature-network metrics; a metric is computed only when its file is given.

    ``lpips``: LPIPS lin weights (``alex.pth``), with ``lpips_backbone`` the torchvision backbone file
    (omit when ``lpips`` holds both). ``fvd``: I3D (pytorch-i3d state dict, or StyleGAN-V's TorchScript).
    ``fid_vid``: FID Inception (pytorch-fid state dict, or StyleGAN2-ADA's TorchScript).
    ``fvd_window``: frames per FVD sample (each clip gives its non-overlapping windows; a clip shorter than
    a window gives one sample of all its frames). ``fid_vid_pooling``: ``mean`` = one feature per clip,
    the mean of its frames' features; ``frames`` = every frame is a sample."""

    lpips: Optional[str] = None
    lpips_backbone: Optional[str] = None
    lpips_net: str = "alex"
    fvd: Optional[str] = None
    fid_vid: Optional[str] = None
    fvd_window: int = 16
    fid_vid_pooling: str = "mean"
    fvd_input_size: int = 224
    fid_input_size: int = 299

    def validate(self) -> "MetricWeights":
        from mimicmotion.feature_nets import LPIPS_BACKBONES, WEIGHTS_SOURCES, WeightsError

        for path, what, key in ((self.lpips, "LPIPS", "lpips"), (self.lpips_backbone, "LPIPS backbone",
                                                                 "lpips_backbone"),
                                (self.fvd, "FVD (I3D)", "i3d"), (self.fid_vid, "FID-VID (Inception)", "inception")):
            if path is not None and not Path(path).is_file():
                raise WeightsError(f"{what} weight file not found: {path} (get it from {WEIGHTS_SOURCES[key]})")
        if self.lpips_backbone is not None and self.lpips is None:
            raise ConfigError("an LPIPS backbone file was given without the LPIPS lin weights (--lpips-weights)")
        if self.lpips_net not in LPIPS_BACKBONES:
            raise ConfigError(f"LPIPS net must be one of {', '.join(LPIPS_BACKBONES)}, got {self.lpips_net!r}")
        if self.fid_vid_pooling not in FID_VID_POOLINGS:
            raise ConfigError(f"fid_vid_pooling must be one of {', '.join(FID_VID_POOLINGS)}, "
                              f"got {self.fid_vid_pooling!r}")
        for name in ("fvd_window", "fvd_input_size", "fid_input_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        return self

    def fingerprint(self) -> dict:
        """What determines the scores: the settings and each given file's identity."""
        out = asdict(self)
        for name in ("lpips", "lpips_backbone", "fvd", "fid_vid"):
            out[name] = _file_identity(getattr(self, name))
        return out


@dataclass
class FeatureNetworks:
    """The loaded metric networks (None: not computed)."""

    lpips: Optional[object] = None  # feature_nets.LPIPSMetric
    fvd: Optional[object] = None  # feature_nets.VideoFeatureExtractor
    fid_vid: Optional[object] = None  # feature_nets.FrameFeatureExtractor
    fvd_window: int = 16
    fid_vid_pooling: str = "mean"


def load_feature_networks(weights: MetricWeights, device="cpu") -> FeatureNetworks:
    from mimicmotion import feature_nets

    weights.validate()
    nets = FeatureNetworks(fvd_window=weights.fvd_window, fid_vid_pooling=weights.fid_vid_pooling)
    if weights.lpips:
        nets.lpips = feature_nets.LPIPSMetric(
            feature_nets.load_lpips(weights.lpips, weights.lpips_backbone, weights.lpips_net), device=device)
    if weights.fvd:
        nets.fvd = feature_nets.load_video_extractor(weights.fvd, device=device, input_size=weights.fvd_input_size)
    if weights.fid_vid:
        nets.fid_vid = feature_nets.load_frame_extractor(weights.fid_vid, device=device,
                                                         input_size=weights.fid_input_size)
    return nets


# ---------------------------------------------------------------------------------------------- features
def fvd_windows(num_frames: int, window: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, stop) windows of ``window`` frames; one window of everything when shorter."""
    if num_frames < 1:
        raise ConfigError("a video with no frames has no FVD features")
    if num_frames < window:
        return [(0, num_frames)]
    return [(s, s + window) for s in range(0, num_frames - window + 1, window)]


def clip_features(video: np.ndarray, nets: FeatureNetworks) -> dict:
    """FVD and FID-VID feature samples of one video (uint8 (T, H, W, 3)): {"fvd": (windows, D),
    "fid_vid": (1, D) or (T, D)}; only the metrics whose networks are loaded."""
    out = {}
    if nets.fvd is not None:
        out["fvd"] = np.stack([nets.fvd(video[a:b]) for a, b in fvd_windows(len(video), nets.fvd_window)])
    if nets.fid_vid is not None:
        per_frame = nets.fid_vid(video)
        out["fid_vid"] = per_frame.mean(axis=0, keepdims=True) if nets.fid_vid_pooling == "mean" else per_frame
    return out


def set_distance(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
    """Fréchet distance between the stacked feature samples of all clips; NaN with fewer than 2 samples a side
    (a covariance needs two)."""
    from mimicmotion.metrics import feature_frechet_distance

    a, b = np.concatenate(list(predicted)), np.concatenate(list(truth))
    if len(a) < 2 or len(b) < 2:
        log.warning("Fréchet distance needs >= 2 feature samples per set (got %d and %d): reported as NaN",
                    len(a), len(b))
        return float("nan")
    return feature_frechet_distance(a, b)


# ---------------------------------------------------------------------------------------------- clips
def select_clips(catalog, clip_ids: Optional[Sequence[str]] = None, query: Optional[str] = None,
                 params: Optional[dict] = None, sql: Optional[str] = None) -> list[str]:
    """The clip ids to evaluate: given ids, a named catalog query (e.g. a test split) with its parameters,
    or SQL with bound ``$params``. The query must return a ``clip_id`` column; duplicates are dropped,
    order kept."""
    from catalog import Catalog

    given = [s for s in ("clip_ids", "query", "sql") if {"clip_ids": clip_ids, "query": query, "sql": sql}[s]]
    if len(given) != 1:
        raise ConfigError("choose the clips one way: clip ids (--clips), a named query (--query NAME) or SQL "
                          f"(--sql); got {', '.join(given) or 'none'}")
    if params and clip_ids:
        raise ConfigError("query parameters (--param) apply to --query or --sql, not to --clips")
    cat = Catalog(catalog)
    if clip_ids:
        ids = [str(c) for c in clip_ids]
    else:
        table = cat.named(query, **(params or {})) if query else cat.query(sql, params or {})
        if "clip_id" not in table.column_names:
            raise ConfigError(f"the clip query must return a clip_id column; it returned {table.column_names}")
        ids = [str(c) for c in table.column("clip_id").to_pylist() if c is not None]
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ConfigError(f"no clips selected from the catalog {cat.root}: check the clip ids or the query")
    known = {r["clip_id"] for r in cat.query("SELECT clip_id FROM clips WHERE list_contains($ids, clip_id)",
                                             {"ids": ids}).to_pylist()}
    unknown = [c for c in ids if c not in known]
    if unknown:
        raise ConfigError(f"clip id(s) not in the catalog {cat.root}: {', '.join(unknown[:8])}; list them with "
                          "`mimicmotion catalog query \"SELECT clip_id FROM clips\"`")
    return ids


def clip_rows(catalog, clip_ids: Sequence[str]) -> dict:
    """clip_id -> the clip's row joined with its video's source file, size and dimensions."""
    from catalog import Catalog

    sql = ("SELECT c.clip_id, c.num_frames, c.fps, c.crop_x, c.crop_y, c.crop_w, c.crop_h, v.source_path, "
           "v.size_bytes, v.width, v.height FROM clips c JOIN videos v USING (video_id) "
           "WHERE list_contains($ids, c.clip_id)")
    return {r["clip_id"]: r for r in Catalog(catalog).query(sql, {"ids": list(clip_ids)}).to_pylist()}


def check_sources(rows: dict) -> None:
    """Every clip's source video is where the catalog says, with the size it had when curated."""
    for clip_id, row in rows.items():
        path = Path(row["source_path"])
        if not path.is_file():
            raise VideoError(f"clip {clip_id}: its source video {path} is gone; the ground truth comes from it "
                             "(put the file back, or re-curate it from its new place)")
        if path.stat().st_size != row["size_bytes"]:
            raise VideoError(f"clip {clip_id}: the source video {path} changed since it was curated (size "
                             f"{path.stat().st_size} != {row['size_bytes']}); re-curate it")


def render_size(crop_width: int, crop_height: int, resolution: int) -> tuple[int, int]:
    """(H, W) the render has for a clip: the release's output size for the crop's orientation."""
    from mimicmotion.preprocess import output_size

    return output_size(crop_height, crop_width, resolution)


@dataclass
class EvalClip:
    """Ground truth of one clip at the render size: frame 0 is the reference."""

    clip_id: str
    frames: np.ndarray  # uint8 (F, H, W, 3)
    poses: PoseSequence  # subject only, normalised to ``frames``
    fps: float


def load_eval_clip(catalog, clip_id: str, row: dict, resolution: int, max_frames: Optional[int] = None) -> EvalClip:
    """Decode the clip's frames, crop them as the catalog says (``crop_and_resize`` at the crop's
    resize-to-cover size, then the release's centre crop to the render size) and map its subject's poses
    into the same frame."""
    from catalog import Catalog
    from mimicmotion.curation import crop_and_resize
    from mimicmotion.preprocess import cover_crop_geometry
    from mimicmotion.render import map_pose_to_reference
    from mimicmotion.video import read_frames

    poses = Catalog(catalog).clip_poses(clip_id, space="crop", subject_only=True)
    n = len(poses) if max_frames is None else min(len(poses), max_frames)
    if n < 2:
        raise ConfigError(f"clip {clip_id} has {n} frame(s); evaluation needs the reference plus at least one "
                          "frame to score")
    crop = (row["crop_x"], row["crop_y"], row["crop_w"], row["crop_h"])
    h, w = render_size(row["crop_w"], row["crop_h"], resolution)
    (cover_h, cover_w), (top, left) = cover_crop_geometry(row["crop_h"], row["crop_w"], h, w)
    source = read_frames(row["source_path"], poses.source_frames[:n])
    frames = np.stack([crop_and_resize(f, crop, cover_w, cover_h)[top:top + h, left:left + w] for f in source])
    mapped = [map_pose_to_reference(f, (row["crop_h"], row["crop_w"]), (h, w)) for f in poses.frames[:n]]
    if len(mapped[0]) == 0:
        raise ConfigError(f"clip {clip_id}: its first frame has no subject pose, so it cannot be the reference")
    seq = PoseSequence(frames=mapped, width=w, height=h, fps=poses.fps, source=poses.source,
                       source_frames=poses.source_frames[:n], sample_stride=poses.sample_stride)
    return EvalClip(clip_id=clip_id, frames=frames, poses=seq, fps=float(row["fps"]))


# ---------------------------------------------------------------------------------------------- predictions
def pose_images(clip: EvalClip) -> np.ndarray:
    """(F+1, H, W, 3): the reference pose, then every clip frame's pose aligned to it (the render path)."""
    from mimicmotion.render import pose_condition_images

    h, w = clip.frames.shape[1:3]
    return pose_condition_images(clip.poses.frames[0], clip.poses, h, w)


def predict(method: str, clip: EvalClip, pipe=None, settings: RenderSettings = RenderSettings(),
            device=None) -> np.ndarray:
    """The method's frames for clip frames 1.. (uint8 (F-1, H, W, 3))."""
    from mimicmotion.render import generate

    reference = clip.frames[0]
    count = len(clip.frames) - 1
    if method == "copy_reference":
        return np.repeat(reference[None], count, axis=0)
    if method == "vae_reconstruction":
        if pipe is None:
            raise ConfigError("method vae_reconstruction needs the model (base model folder and checkpoint)")
        return vae_roundtrip(pipe, clip.frames[1:], settings.decode_chunk_size, device)
    if method not in (MODEL_METHOD, "blank_pose"):
        raise ConfigError(f"unknown method {method!r}; use {MODEL_METHOD} or one of {', '.join(KNOWN_BASELINES)}")
    if pipe is None:
        raise ConfigError(f"method {method} needs the model (base model folder and checkpoint)")
    images = pose_images(clip)
    if method == "blank_pose":
        images = np.zeros_like(images)
    frames = generate(pipe, reference, images, settings, device=device)
    # generate() returns one frame per driving pose (clip frames 0..F-1); frame 0 is the reference's slot.
    return frames[1:]


def vae_roundtrip(pipe, frames: np.ndarray, decode_chunk_size: int = 8, device=None) -> np.ndarray:
    """uint8 frames (F, H, W, 3) encoded by the pipeline's VAE (posterior mode) and decoded as the sampler
    decodes (``pipe.decode``: scaled latents, ``decode_chunk_size`` frames at a time)."""
    import torch

    from mimicmotion.demo_model import frames_to_tensor
    from mimicmotion.pipeline import frames_to_uint8

    vae = pipe.vae
    device = torch.device(device) if device is not None else pipe._execution_device
    pixels = frames_to_tensor(frames)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + decode_chunk_size].to(device, vae.dtype)).latent_dist.mode()
                             for i in range(0, len(pixels), decode_chunk_size)])
        decoded = pipe.decode(latents[None] * vae.config.scaling_factor, decode_chunk_size)
    return frames_to_uint8(decoded[0])


def score(predicted: np.ndarray, truth: np.ndarray, nets: FeatureNetworks) -> dict:
    """Per-clip scores (means over frames) and feature samples of one prediction against the truth."""
    from mimicmotion.metrics import psnr, ssim

    if predicted.shape != truth.shape:
        raise ConfigError(f"prediction {predicted.shape} and ground truth {truth.shape} differ in shape")
    out = {"num_frames": int(len(truth)), "ssim": ssim(predicted, truth), "psnr": psnr(predicted, truth),
           "lpips": float(nets.lpips(predicted, truth)) if nets.lpips is not None else float("nan")}
    out["features"] = clip_features(predicted, nets)
    return out


# ---------------------------------------------------------------------------------------------- work cache
def _file_identity(path) -> Optional[dict]:
    if path is None:
        return None
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _folder_identity(folder) -> dict:
    """Every file under ``folder`` with its size and modification time: a base model whose VAE or UNet weights
    were replaced in place gets a new identity, so resumed evaluations do not reuse renders of the old one."""
    root = Path(folder).resolve()
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            files[str(p.relative_to(root))] = [st.st_size, st.st_mtime_ns]
    return {"path": str(root), "files": files}


def fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def save_work(path: Path, key: str, result: dict) -> None:
    arrays = {f"features_{k}": v for k, v in result["features"].items()}
    scalars = {k: v for k, v in result.items() if k != "features"}
    _atomic_savez(path, key=np.array(key), scalars=np.array(json.dumps(scalars)), **arrays)


def load_work(path: Path, key: str) -> Optional[dict]:
    """A finished result saved under ``path`` if it was made with the same inputs (``key``)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            result = json.loads(str(data["scalars"]))
            result["features"] = {k[len("features_"):]: data[k] for k in data.files if k.startswith("features_")}
            return result
    except (OSError, ValueError, KeyError):
        return None  # a damaged file is recomputed


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class EvaluationPlan:
    """Everything checked before any model is loaded."""

    catalog: str
    clip_ids: list
    rows: dict
    methods: list
    settings: RenderSettings
    weights: MetricWeights
    out_dir: Path
    base_model: Optional[str] = None
    checkpoint: Optional[str] = None
    dtype: str = "float32"
    save_videos: bool = False  # write each prediction as <out>/videos/<clip>_<method>.mp4 when computed
    model_identity: dict = field(default_factory=dict)

    @property
    def needs_model(self) -> bool:
        return any(m != "copy_reference" for m in self.methods)

    def work_key(self, clip_id: str, method: str) -> str:
        """Identity of one (clip, method) result: the inputs it depends on (no model for the ground truth
        and copy_reference)."""
        renders = method not in ("ground_truth", "copy_reference")
        model = self.model_identity if renders else None
        settings = asdict(self.settings) if renders else {"resolution": self.settings.resolution,
                                                          "max_frames": self.settings.max_frames}
        return fingerprint(clip=clip_id, method=method, model=model, settings=settings,
                           weights=self.weights.fingerprint(), row=self.rows[clip_id], dtype=self.dtype)

    def work_path(self, clip_id: str, method: str) -> Path:
        return self.out_dir / WORK_DIR / clip_id / f"{method}.npz"


def parse_methods(baselines, include_model: bool = True) -> list:
    """The methods to run: the model (unless ``include_model`` is false) and the named baselines
    (a list, or a comma-separated string)."""
    if isinstance(baselines, str):
        baselines = [b.strip() for b in baselines.split(",") if b.strip()]
    baselines = list(dict.fromkeys(baselines or []))
    unknown = [b for b in baselines if b not in KNOWN_BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {', '.join(unknown)}; available: {', '.join(KNOWN_BASELINES)}")
    methods = ([MODEL_METHOD] if include_model else []) + baselines
    if not methods:
        raise ConfigError("nothing to evaluate: include the model or at least one baseline")
    return methods


def plan_evaluation(catalog, out_dir, *, base_model=None, checkpoint=None, clip_ids=None, query=None, params=None,
                    sql=None, baselines=BASELINES, include_model: bool = True,
                    settings: RenderSettings = RenderSettings(), weights: MetricWeights = MetricWeights(),
                    dtype: str = "float32", save_videos: bool = False) -> EvaluationPlan:
    """Validate every input and select the clips; raises before any model is loaded or frame decoded."""
    from catalog.store import catalog_root
    from mimicmotion.loading import check_base_model_dir

    settings.validate()
    weights.validate()
    methods = parse_methods(baselines, include_model)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    root = catalog_root(catalog)
    if not root.is_dir():
        raise ConfigError(f"catalog folder not found: {root} (build one with `mimicmotion curate`)")
    plan = EvaluationPlan(catalog=str(root), clip_ids=[], rows={}, methods=methods, settings=settings,
                          weights=weights, out_dir=Path(out_dir), base_model=base_model, checkpoint=checkpoint,
                          dtype=dtype, save_videos=save_videos)
    if plan.needs_model:
        if base_model is None or checkpoint is None:
            raise ConfigError(f"methods {', '.join(m for m in methods if m != 'copy_reference')} need the model: "
                              "pass the base model folder and the checkpoint")
        check_base_model_dir(base_model)
        if not Path(checkpoint).is_file():
            raise ConfigError(f"checkpoint not found: {checkpoint} (the MimicMotion .pth or .safetensors file)")
        plan.model_identity = {"base_model": _folder_identity(base_model),
                               "checkpoint": _file_identity(checkpoint)}
    plan.clip_ids = select_clips(root, clip_ids, query, params, sql)
    plan.rows = clip_rows(root, plan.clip_ids)
    check_sources(plan.rows)
    return plan


def model_work_pending(plan: EvaluationPlan, resume: bool = True) -> bool:
    """Whether any (clip, model-based method) still has to be rendered."""
    return any(not resume or load_work(plan.work_path(c, m), plan.work_key(c, m)) is None
               for c in plan.clip_ids for m in plan.methods if m != "copy_reference")


def load_model(plan: EvaluationPlan, device, resume: bool = True):
    """The pipeline, or None when no method needs it or every render is already done (resumed run)."""
    if not plan.needs_model or not model_work_pending(plan, resume):
        return None
    import torch

    from mimicmotion.loading import load_pipeline

    pipe = load_pipeline(plan.base_model, plan.checkpoint, dtype=getattr(torch, plan.dtype), device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate_clip(plan: EvaluationPlan, clip_id: str, pipe, nets: FeatureNetworks, device=None,
                  resume: bool = True) -> dict:
    """All methods on one clip: {"rows": [one dict per method], "features": {method or "ground_truth":
    {metric: samples}}}. Finished (clip, method) pairs are reused when their inputs are unchanged."""
    clip = None
    rows, features = [], {}
    for method in ["ground_truth", *plan.methods]:
        path, key = plan.work_path(clip_id, method), plan.work_key(clip_id, method)
        result = load_work(path, key) if resume else None
        if result is None:
            if clip is None:
                clip = load_eval_clip(plan.catalog, clip_id, plan.rows[clip_id], plan.settings.resolution,
                                      plan.settings.max_frames)
            truth = clip.frames[1:]
            start = time.perf_counter()
            if method == "ground_truth":
                result = {"features": clip_features(truth, nets), "seconds": 0.0}
            else:
                predicted = predict(method, clip, pipe, plan.settings, device=device)
                seconds = time.perf_counter() - start
                result = {**score(predicted, truth, nets), "seconds": seconds}
                if plan.save_videos:
                    from mimicmotion.video import write_video

                    write_video(plan.out_dir / "videos" / f"{clip_id}_{method}.mp4", predicted, fps=clip.fps or 15.0)
            save_work(path, key, result)
        features[method] = result["features"]
        if method != "ground_truth":
            rows.append({"clip_id": clip_id, "method": method,
                         **{c: result[c] for c in CLIP_COLUMNS if c not in ("clip_id", "method")}})
            log.info("%s %s: SSIM %.4f PSNR %.2f", clip_id, method, result["ssim"], result["psnr"])
    return {"rows": rows, "features": features}


def summarize(plan: EvaluationPlan, clip_results: Sequence[dict]) -> list[dict]:
    """One row per method: clip and frame counts, mean SSIM / PSNR / LPIPS over clips, FID-VID and FVD."""
    summary = []
    for method in plan.methods:
        rows = [r for res in clip_results for r in res["rows"] if r["method"] == method]
        row = {"method": method, "clips": len(rows), "frames": int(sum(r["num_frames"] for r in rows))}
        for metric in ("ssim", "psnr", "lpips"):
            values = np.array([r[metric] for r in rows], dtype=np.float64)
            row[metric] = float(values.mean()) if len(values) and not np.isnan(values).all() else float("nan")
        for metric in ("fid_vid", "fvd"):
            predicted = [res["features"][method][metric] for res in clip_results if metric in res["features"][method]]
            truth = [res["features"]["ground_truth"][metric] for res in clip_results
                     if metric in res["features"]["ground_truth"]]
            row[metric] = set_distance(predicted, truth) if predicted and truth else float("nan")
        summary.append(row)
    return summary


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, float) and np.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def summary_markdown(plan: EvaluationPlan, summary: Sequence[dict]) -> str:
    s = plan.settings
    lines = [f"# Evaluation: {len(plan.clip_ids)} clip(s) of {plan.catalog}", ""]
    if plan.needs_model:
        lines.append(f"Model: `{plan.base_model}` + `{plan.checkpoint}` ({plan.dtype}); resolution "
                     f"{s.resolution}, {s.num_inference_steps} steps, tiles {s.tile_size}/{s.tile_overlap}, "
                     f"guidance {s.min_guidance_scale:g}, seed {s.seed}.")
    lines += ["Scores compare frames 1.. of each clip (frame 0 is the reference and is not scored); SSIM, PSNR "
              "and LPIPS are means over clips of per-clip means over frames; FID-VID and FVD are over all clips.",
              "", "| method | clips | frames | SSIM ↑ | PSNR (dB) ↑ | LPIPS ↓ | FID-VID ↓ | FVD ↓ |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['method']} | {r['clips']} | {r['frames']} | {_fmt(r['ssim'], 4)} | {_fmt(r['psnr'], 2)} | "
                     f"{_fmt(r['lpips'], 4)} | {_fmt(r['fid_vid'], 2)} | {_fmt(r['fvd'], 1)} |")
    p = PUBLISHED
    lines += ["", f"Published MimicMotion (SPEC section 8, TikTok test set): SSIM {p['ssim']}, PSNR {p['psnr']}, "
              f"FID-VID {p['fid_vid']}, FVD {p['fvd']:g}; comparable only on the same clips, resolution and "
              "feature networks. '-' = not computed (no weights given, or fewer than 2 feature samples)."]
    return "\n".join(lines) + "\n"


def _atomic_parquet(table, path: Path) -> Path:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _atomic_text(text: str, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_results(plan: EvaluationPlan, clip_results: Sequence[dict], summary: Sequence[dict]) -> dict:
    """clips.parquet, summary.parquet and summary.md in the output folder, each replaced atomically. The
    settings go into the Parquet files' metadata (key ``mimicmotion.evaluation``)."""
    import pyarrow as pa

    meta = {b"mimicmotion.evaluation": json.dumps({
        "catalog": plan.catalog, "base_model": plan.base_model, "checkpoint": plan.checkpoint, "dtype": plan.dtype,
        "settings": asdict(plan.settings), "weights": asdict(plan.weights), "methods": plan.methods,
    }, default=str).encode()}
    clip_schema = pa.schema([("clip_id", pa.string()), ("method", pa.string()), ("num_frames", pa.int32()),
                             ("ssim", pa.float64()), ("psnr", pa.float64()), ("lpips", pa.float64()),
                             ("seconds", pa.float64())], metadata=meta)
    summary_schema = pa.schema([("method", pa.string()), ("clips", pa.int32()), ("frames", pa.int64()),
                                ("ssim", pa.float64()), ("psnr", pa.float64()), ("lpips", pa.float64()),
                                ("fid_vid", pa.float64()), ("fvd", pa.float64())], metadata=meta)
    rows = [r for res in clip_results for r in res["rows"]]
    out = plan.out_dir
    markdown = summary_markdown(plan, summary)
    paths = {
        "clips": _atomic_parquet(pa.Table.from_pylist(rows, schema=clip_schema), out / "clips.parquet"),
        "summary": _atomic_parquet(pa.Table.from_pylist(list(summary), schema=summary_schema), out / "summary.parquet"),
        "markdown": _atomic_text(markdown, out / "summary.md"),
    }
    return {"paths": {f"{k}_path": str(v) for k, v in paths.items()}, "markdown": markdown}


def result_dict(plan: EvaluationPlan, clip_results: Sequence[dict], summary: Sequence[dict], written: dict) -> dict:
    return {"clips": [r for res in clip_results for r in res["rows"]], "summary": list(summary),
            "markdown": written["markdown"], **written["paths"], "clip_ids": list(plan.clip_ids),
            "methods": list(plan.methods)}


def default_device(device: Optional[str]) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(catalog, out_dir, *, base_model=None, checkpoint=None, clip_ids=None, query=None, params=None,
             sql=None, baselines=BASELINES, include_model: bool = True, settings: RenderSettings = RenderSettings(),
             weights: MetricWeights = MetricWeights(), device: Optional[str] = None, dtype: str = "float32",
             resume: bool = True, save_videos: bool = False) -> dict:
    """Evaluate without Prefect (the `evaluate` flow runs the same steps as tasks). Returns ``clips`` (one
    dict per clip and method), ``summary`` (one per method), ``markdown``, the written files'
    ``clips_path`` / ``summary_path`` / ``markdown_path``, ``clip_ids`` and ``methods``."""
    plan = plan_evaluation(catalog, out_dir, base_model=base_model, checkpoint=checkpoint, clip_ids=clip_ids,
                           query=query, params=params, sql=sql, baselines=baselines, include_model=include_model,
                           settings=settings, weights=weights, dtype=dtype, save_videos=save_videos)
    device = default_device(device)
    nets = load_feature_networks(weights, device)
    pipe = load_model(plan, device, resume=resume)
    results = [evaluate_clip(plan, clip_id, pipe, nets, device=device, resume=resume) for clip_id in plan.clip_ids]
    summary = summarize(plan, results)
    return result_dict(plan, results, summary, write_results(plan, results, summary))


# ---------------------------------------------------------------------------------------------- CLI
def _parse_params(items) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def cmd_evaluate(args) -> int:
    from catalog.queries import ad_hoc_params

    params = _parse_params(args.param)
    if args.sql:  # ad hoc SQL: text, or KEY:TYPE; named queries convert to their declared types
        params = ad_hoc_params(params)
    settings = RenderSettings(resolution=args.resolution, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                              num_inference_steps=args.steps, min_guidance_scale=args.guidance,
                              max_guidance_scale=args.guidance, noise_aug_strength=args.noise_aug_strength,
                              decode_chunk_size=args.decode_chunk_size, seed=args.seed, max_frames=args.max_frames)
    weights = MetricWeights(lpips=args.lpips_weights, lpips_backbone=args.lpips_backbone, lpips_net=args.lpips_net,
                            fvd=args.fvd_weights, fid_vid=args.fid_vid_weights, fvd_window=args.fvd_window,
                            fid_vid_pooling=args.fid_vid_pooling)
    result = evaluate(args.catalog, args.out, base_model=args.base_model, checkpoint=args.checkpoint,
                      clip_ids=args.clips, query=args.query, params=params, sql=args.sql, baselines=args.baselines,
                      include_model=not args.no_model, settings=settings, weights=weights, device=args.device,
                      dtype=args.dtype, resume=not args.no_resume, save_videos=args.save_videos)
    print(result["markdown"])
    print(f"wrote {result['clips_path']}, {result['summary_path']}, {result['markdown_path']}")
    return 0


def add_evaluate_command(subparsers) -> None:
    """Register `evaluate` on the main CLI's subparsers."""
    e = subparsers.add_parser("evaluate", help="score renders of catalog clips against their ground truth "
                                               "(SSIM, PSNR; LPIPS, FID-VID, FVD with their weights)")
    e.add_argument("--catalog", default=None, help="catalog folder (default: $MIMICMOTION_CATALOG)")
    e.add_argument("--base-model", help="Stable Video Diffusion img2vid-xt folder (diffusers layout)")
    e.add_argument("--checkpoint", help="MimicMotion checkpoint (.pth or .safetensors)")
    pick = e.add_mutually_exclusive_group(required=True)
    pick.add_argument("--clips", nargs="+", metavar="ID", help="clip ids to evaluate")
    pick.add_argument("--query", metavar="NAME", help="a named catalog query selecting the clips (e.g. a test split)")
    pick.add_argument("--sql", help="SQL over the catalog views returning a clip_id column")
    e.add_argument("--param", action="append", metavar="KEY=VALUE", help="parameter of --query / --sql (repeatable)")
    e.add_argument("--out", required=True, help="output folder (clips.parquet, summary.parquet, summary.md)")
    e.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"comma-separated baselines among {', '.join(KNOWN_BASELINES)}; '' for none "
                        f"(default: {', '.join(BASELINES)})")
    e.add_argument("--no-model", action="store_true", help="score only the baselines (copy_reference needs no model)")
    e.add_argument("--resolution", type=int, default=576)
    e.add_argument("--tile-size", type=int, default=72)
    e.add_argument("--tile-overlap", type=int, default=6)
    e.add_argument("--steps", type=int, default=25)
    e.add_argument("--guidance", type=float, default=2.0)
    e.add_argument("--noise-aug-strength", type=float, default=0.0)
    e.add_argument("--decode-chunk-size", type=int, default=8)
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames of each clip")
    e.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    e.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    e.add_argument("--lpips-weights", help="LPIPS lin weights (alex.pth / vgg.pth of the LPIPS release)")
    e.add_argument("--lpips-backbone", help="the LPIPS backbone's ImageNet weights (torchvision alexnet/vgg16 file)")
    e.add_argument("--lpips-net", default="alex", choices=["alex", "vgg"])
    e.add_argument("--fvd-weights", help="I3D for FVD: pytorch-i3d rgb_imagenet.pt, or StyleGAN-V i3d_torchscript.pt")
    e.add_argument("--fid-vid-weights", help="Inception for FID-VID: pytorch-fid pt_inception-2015-12-05 weights, or "
                                             "StyleGAN2-ADA inception-2015-12-05.pt")
    e.add_argument("--fvd-window", type=int, default=16, help="frames per FVD sample (default: 16)")
    e.add_argument("--fid-vid-pooling", choices=FID_VID_POOLINGS, default="mean",
                   help="mean: one feature per clip (mean over its frames); frames: every frame a sample")
    e.add_argument("--save-videos", action="store_true", help="also write each prediction as an mp4")
    e.add_argument("--no-resume", action="store_true", help="recompute clips finished by an earlier run")
    e.set_defaults(func=cmd_evaluate)
