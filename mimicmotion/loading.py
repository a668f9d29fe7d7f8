"""Load MimicMotion from an SVD base folder plus a MimicMotion checkpoint (SPEC section 5).

The base folder is Stable Video Diffusion img2vid-xt(-1-1) in diffusers layout (``unet/``, ``vae/``,
``image_encoder/``, ``scheduler/``, ``feature_extractor/``). The UNet is built from ``unet/config.json`` only
and takes ALL its weights from the checkpoint's ``unet.*`` keys; the PoseNet from ``pose_net.*``. The VAE,
CLIP image encoder, scheduler and feature extractor come from the base folder; ``vae.*`` and
``image_encoder.*`` keys in the checkpoint, when present, replace the base's (the release loaded its
checkpoint with ``strict=False`` into one module holding all components, which has that effect).

Unlike the release, a checkpoint that lacks UNet or PoseNet weights is refused (the release silently ran a
randomly initialised UNet), and pickled checkpoints are read with ``torch.load(weights_only=True)``: a
pickle that contains code or arbitrary Python objects is refused, never executed.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from mimicmotion.errors import ModelFileError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Checkpoint key prefixes: the components whose weights must all be in the checkpoint, then those the
# checkpoint may override.
REQUIRED_COMPONENTS = ("unet", "pose_net")
OPTIONAL_COMPONENTS = ("vae", "image_encoder")
BASE_SUBFOLDERS = ("unet", "vae", "image_encoder", "scheduler", "feature_extractor")
# Training frameworks often wrap the weights: {"state_dict": {...}}, {"module": {...}} (DeepSpeed).
WRAPPER_KEYS = ("state_dict", "module")
DDP_PREFIX = "module."
# How many key names an error or warning message lists.
KEYS_SHOWN = 8

BASE_MODEL_HINT = (
    "download Stable Video Diffusion img2vid-xt 1.1 in diffusers layout "
    "(stabilityai/stable-video-diffusion-img2vid-xt-1-1) and pass its folder"
)


@dataclass(frozen=True)
class LoadReport:
    """What ``load_pipeline`` took from the checkpoint.

    ``missing_keys``: UNet / PoseNet weights the checkpoint lacks (e.g. ``"unet.conv_in.weight"``), left at
    random initialisation (only possible with ``strict=False``). ``unexpected_keys``: checkpoint keys no
    component uses. ``overridden``: number of base-folder tensors replaced by checkpoint tensors, per
    optional component (``vae``, ``image_encoder``).
    """

    checkpoint: str
    missing_keys: tuple = ()
    unexpected_keys: tuple = ()
    overridden: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing_keys


# --------------------------------------------------------------------------------------------- reading
def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 8 + header_len <= path.stat().st_size


def _is_torch_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _refused_pickle_message(path: Path, error: Exception) -> str:
    text = str(error)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return (
            f"checkpoint {path} contains pickled Python code or objects ({match.group(1)}), not only tensors; "
            "it was NOT loaded, because unpickling it could run arbitrary code. Use a .safetensors checkpoint, or "
            "if you trust the file's source convert it to a plain state dict of tensors in a separate environment"
        )
    return (
        f"checkpoint {path} could not be read as a weights-only torch file (corrupt, truncated, not a torch "
        "checkpoint, or using pickle features a safe load refuses); it was NOT loaded. Re-download it, or use a "
        ".safetensors checkpoint"
    )


def _load_raw(path: Path):
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelFileError(f"checkpoint {path} is not a readable safetensors file ({e}); re-download it") from e
    try:
        # mmap keeps a multi-GB checkpoint out of RAM; only the zip format (torch >= 1.6 default) supports it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_torch_zip(path))
    except pickle.UnpicklingError as e:
        raise ModelFileError(_refused_pickle_message(path, e)) from e
    except Exception as e:  # noqa: BLE001 - a malformed pickle can fail in many ways; all mean "unreadable"
        raise ModelFileError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'empty'}); "
            "expected a torch .pth/.pt file or a .safetensors file, re-download it"
        ) from e


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict:
    """The flat ``name -> tensor`` dict inside a loaded checkpoint.

    Descends into ``state_dict`` / ``module`` wrappers, strips a DistributedDataParallel ``module.`` prefix
    carried by every key, and drops non-tensor entries (epoch counters and the like)."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ModelFileError(
            f"{source} holds a {type(obj).__name__}, not a state dict of named tensors; it is not a MimicMotion "
            "checkpoint"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        logger.info("%s: ignoring %d non-tensor entries (%s)", source, len(dropped), ", ".join(dropped[:KEYS_SHOWN]))
    if not tensors:
        raise ModelFileError(f"{source} contains no tensors; it is not a MimicMotion checkpoint")
    if all(k.startswith(DDP_PREFIX) for k in tensors):
        tensors = {k[len(DDP_PREFIX):]: v for k, v in tensors.items()}
    return tensors


def read_checkpoint(checkpoint_path: PathLike) -> dict:
    """Read a checkpoint (.safetensors, or a torch pickle loaded weights-only) into a flat dict of tensors
    on the CPU. The format is recognised from the file's content, not its name."""
    path = Path(checkpoint_path)
    if not path.exists():
        raise ModelFileError(
            f"checkpoint {path} not found; download MimicMotion_1-1.pth (tencent/MimicMotion) and pass its path"
        )
    if not path.is_file():
        raise ModelFileError(f"checkpoint {path} is not a file; pass the path of the .pth or .safetensors file")
    return unwrap_state_dict(_load_raw(path), source=f"checkpoint {path}")


def split_checkpoint(state: Mapping) -> tuple:
    """(``{component: {name: tensor}}`` for the known prefixes, sorted list of keys with no known prefix)."""
    groups: dict = {name: {} for name in REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS}
    unexpected = []
    for key, tensor in state.items():
        prefix, _, rest = key.partition(".")
        if prefix in groups and rest:
            groups[prefix][rest] = tensor
        else:
            unexpected.append(key)
    return groups, sorted(unexpected)


# --------------------------------------------------------------------------------------------- building
def _shown(keys) -> str:
    keys = list(keys)
    more = f" and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else ""
    return ", ".join(keys[:KEYS_SHOWN]) + more


def _check_shapes(component: str, module_state: Mapping, weights: Mapping, checkpoint: str) -> None:
    mismatched = [
        f"{component}.{k} {tuple(v.shape)} vs {tuple(module_state[k].shape)}"
        for k, v in weights.items()
        if k in module_state and tuple(v.shape) != tuple(module_state[k].shape)
    ]
    if mismatched:
        raise ModelFileError(
            f"checkpoint {checkpoint} does not fit the {component} built from the base model (checkpoint vs model "
            f"shape: {_shown(mismatched)}); the checkpoint was trained on a different base model: use the SVD "
            "img2vid-xt 1.1 base folder"
        )


def _has_non_persistent_buffers(module: torch.nn.Module) -> bool:
    return any(m._non_persistent_buffers_set for m in module.modules())


def build_with_weights(factory: Callable[[], torch.nn.Module], weights: Mapping, *, component: str, checkpoint: str,
                       strict: bool, dtype: torch.dtype, device) -> tuple:
    """Build ``factory()`` and load ``weights`` into it; returns (module, missing names, unexpected names).

    The module is first built on the meta device to learn its parameter names and shapes for free. When the
    weights cover everything, the real module is allocated directly on ``device`` in ``dtype`` and filled
    (no random initialisation of a 1.5B-parameter UNet that would be overwritten). Otherwise (``strict``
    False) it is built normally so that what the checkpoint lacks keeps its usual initialisation.
    """
    with torch.device("meta"):
        skeleton = factory()
    expected = skeleton.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    _check_shapes(component, expected, weights, checkpoint)
    if missing and strict:
        hint = ""
        if not weights:
            hint = f" (it has no '{component}.' keys at all"
            hint += "; is it a checkpoint of another model?)" if component == "unet" else ")"
        raise ModelFileError(
            f"checkpoint {checkpoint} lacks {len(missing)} of {len(expected)} {component} weights{hint}: "
            f"{_shown(component + '.' + k for k in missing)}. Running would use randomly initialised weights "
            "(the release does so silently); pass the MimicMotion checkpoint that matches this base model, or "
            "load with strict=False to run anyway"
        )
    # torch.nn.Module.to, not diffusers' override: that one warns about fp32-pinned modules on every dtype
    # cast, even when a model has none.
    if missing or _has_non_persistent_buffers(skeleton):
        module = torch.nn.Module.to(factory(), device=device, dtype=dtype)
    else:
        module = torch.nn.Module.to(skeleton, dtype=dtype).to_empty(device=device)
    with torch.no_grad():
        module.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=False)
    return module.eval(), missing, unexpected


def _override_with_weights(module: torch.nn.Module, weights: Mapping, *, component: str, checkpoint: str) -> list:
    """Replace a base-folder component's tensors by the checkpoint's; returns the unexpected names."""
    if not weights:
        return []
    current = module.state_dict()
    _check_shapes(component, current, weights, checkpoint)
    with torch.no_grad():
        module.load_state_dict({k: v for k, v in weights.items() if k in current}, strict=False)
    return [k for k in weights if k not in current]


# --------------------------------------------------------------------------------------------- base folder
def check_base_model_dir(base_model_dir: PathLike) -> Path:
    """The base folder as a Path, after checking it holds every subfolder MimicMotion needs."""
    base = Path(base_model_dir)
    if not base.is_dir():
        raise ModelFileError(f"base model folder {base} not found; {BASE_MODEL_HINT}")
    for name in BASE_SUBFOLDERS:
        if not (base / name).is_dir():
            raise ModelFileError(f"base model folder {base} has no {name}/ subfolder; {BASE_MODEL_HINT}")
    for name, config in (("unet", "config.json"), ("scheduler", "scheduler_config.json"),
                         ("feature_extractor", "preprocessor_config.json")):
        if not (base / name / config).is_file():
            raise ModelFileError(f"{base / name} has no {config}; {BASE_MODEL_HINT}")
    return base


def weights_variant(folder: Path, stems: tuple) -> Optional[str]:
    """``None`` when ``folder`` holds full-precision weight files named ``<stem>.*``, ``"fp16"`` when it holds
    only the fp16 variant (``<stem>.fp16.*``, as a partial download of SVD has)."""
    weights = [
        p.name for p in folder.iterdir()
        if p.is_file() and p.name.startswith(tuple(stem + "." for stem in stems))
        and (p.name.endswith((".safetensors", ".bin")) or ".index." in p.name)
    ]
    if any(".fp16." not in name for name in weights):
        return None
    if weights:
        return "fp16"
    raise ModelFileError(f"{folder} holds no weight files ({' or '.join(s + '.safetensors' for s in stems)}, or "
                         f"their .fp16 variant); {BASE_MODEL_HINT}")


def clip_image_processor_class():
    """The CLIP image processor class that works here: transformers 5 maps ``CLIPImageProcessor`` to a
    torchvision backend and falls back (with a warning) to ``CLIPImageProcessorPil`` without torchvision."""
    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def _load_from_base(what: str, folder: Path, loader: Callable):
    from safetensors import SafetensorError

    try:
        return loader()
    except ModelFileError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ModelFileError(f"could not load the {what} from {folder} ({type(e).__name__}: {e}); "
                             f"{BASE_MODEL_HINT}") from e


# --------------------------------------------------------------------------------------------- public API
def load_pipeline(base_model_dir: PathLike, checkpoint_path: PathLike, dtype: torch.dtype = torch.float32,
                  device="cpu", *, strict: bool = True):
    """Build a ``MimicMotionPipeline`` from an SVD base folder and a MimicMotion checkpoint.

    ``strict`` (default): raise ``ModelFileError`` when the checkpoint lacks any UNet or PoseNet weight.
    Unexpected checkpoint keys are logged, never fatal. The returned pipeline carries a ``LoadReport`` as
    ``pipe.load_report``.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
    from transformers import CLIPVisionModelWithProjection

    from mimicmotion.models.pose_net import PoseNet, vae_downscale
    from mimicmotion.models.unet import PoseConditionedUNet
    from mimicmotion.pipeline import MimicMotionPipeline

    base = check_base_model_dir(base_model_dir)
    checkpoint = str(checkpoint_path)
    groups, unexpected = split_checkpoint(read_checkpoint(checkpoint_path))

    unet_config = _load_from_base("UNet config", base / "unet",
                                  lambda: PoseConditionedUNet.load_config(base / "unet", local_files_only=True))
    unet, missing_unet, unexpected_unet = build_with_weights(
        lambda: PoseConditionedUNet.from_config(unet_config), groups["unet"], component="unet",
        checkpoint=checkpoint, strict=strict, dtype=dtype, device=device)
    vae_dir = base / "vae"
    vae = _load_from_base("VAE", vae_dir, lambda: AutoencoderKLTemporalDecoder.from_pretrained(
        vae_dir, torch_dtype=dtype, variant=weights_variant(vae_dir, ("diffusion_pytorch_model",)),
        local_files_only=True))
    pose_net, missing_pose, unexpected_pose = build_with_weights(
        lambda: PoseNet(noise_latent_channels=unet.config.block_out_channels[0], downscale=vae_downscale(vae.config)),
        groups["pose_net"], component="pose_net", checkpoint=checkpoint, strict=strict, dtype=dtype, device=device)
    clip_dir = base / "image_encoder"
    image_encoder = _load_from_base("image encoder", clip_dir, lambda: CLIPVisionModelWithProjection.from_pretrained(
        clip_dir, variant=weights_variant(clip_dir, ("model", "pytorch_model")), local_files_only=True))
    scheduler = _load_from_base("scheduler", base / "scheduler", lambda: EulerDiscreteScheduler.from_pretrained(
        base / "scheduler", local_files_only=True))
    feature_extractor = _load_from_base("feature extractor", base / "feature_extractor",
                                        lambda: clip_image_processor_class().from_pretrained(
                                            base / "feature_extractor", local_files_only=True))

    overridden = {}
    unexpected_optional = []
    for name, module in (("vae", vae), ("image_encoder", image_encoder)):
        extra = _override_with_weights(module, groups[name], component=name, checkpoint=checkpoint)
        unexpected_optional += [f"{name}.{k}" for k in extra]
        if groups[name]:
            overridden[name] = len(groups[name]) - len(extra)
    vae = vae.to(device).eval()  # already in dtype (torch_dtype above; checkpoint tensors are cast on copy)
    image_encoder = image_encoder.to(device=device, dtype=dtype).eval()

    report = LoadReport(
        checkpoint=checkpoint,
        missing_keys=tuple([f"unet.{k}" for k in missing_unet] + [f"pose_net.{k}" for k in missing_pose]),
        unexpected_keys=tuple(sorted(unexpected + [f"unet.{k}" for k in unexpected_unet]
                                     + [f"pose_net.{k}" for k in unexpected_pose] + unexpected_optional)),
        overridden=overridden,
    )
    _log_report(report)
    pipe = MimicMotionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                               feature_extractor=feature_extractor, pose_net=pose_net)
    pipe.load_report = report
    return pipe


def _log_report(report: LoadReport) -> None:
    if report.missing_keys:
        logger.warning("checkpoint %s lacks %d UNet/PoseNet weights, left RANDOMLY INITIALISED: %s",
                       report.checkpoint, len(report.missing_keys), _shown(report.missing_keys))
    if report.unexpected_keys:
        logger.warning("checkpoint %s has %d keys no component uses (ignored): %s",
                       report.checkpoint, len(report.unexpected_keys), _shown(report.unexpected_keys))
    for name, count in report.overridden.items():
        logger.info("checkpoint %s replaces %d %s tensors of the base model", report.checkpoint, count, name)


def _safetensors_ready(tensors: Mapping) -> dict:
    """Contiguous CPU tensors with no shared storage (safetensors refuses aliasing; tied weights get a copy)."""
    storages = set()
    ready = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if tensor.numel() and ptr in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        ready[key] = tensor
    return ready


def _atomic_save_safetensors(tensors: Mapping, out_path: PathLike) -> Path:
    from safetensors.torch import save_file

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(_safetensors_ready(tensors), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def export_checkpoint(checkpoint_path: PathLike, out_path: PathLike) -> Path:
    """Rewrite a checkpoint (e.g. the released ``MimicMotion_1-1.pth``) as safetensors with the same keys and
    dtypes (fp16 stays fp16). The pickle is read weights-only; the output is written atomically."""
    state = read_checkpoint(checkpoint_path)
    out = _atomic_save_safetensors(state, out_path)
    logger.info("exported %d tensors from %s to %s", len(state), checkpoint_path, out)
    return out


def save_checkpoint(pipe_or_modules, out_path: PathLike) -> Path:
    """Write ``unet.*`` and ``pose_net.*`` (the trained weights) as a safetensors checkpoint, atomically.

    ``pipe_or_modules``: a pipeline (or any object) with ``unet`` and ``pose_net`` attributes, or a mapping
    ``{"unet": module, "pose_net": module}``. Tensors keep their dtype."""
    modules = {}
    for name in REQUIRED_COMPONENTS:
        module = (pipe_or_modules.get(name) if isinstance(pipe_or_modules, Mapping)
                  else getattr(pipe_or_modules, name, None))
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"save_checkpoint needs a '{name}' module, got {type(module).__name__}")
        modules[name] = module
    tensors = {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}
    return _atomic_save_safetensors(tensors, out_path)
