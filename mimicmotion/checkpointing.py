"""Latent checkpoints: save the denoising state after each step so a killed render resumes where it stopped.

A checkpoint holds the latent after step ``step`` (0-based, so ``step + 1`` steps are done), the caller's
generator state and a fingerprint of everything that determines the render (inputs and sampling
parameters). Resuming recomputes the conditioning with the same seed (cheap and deterministic), then
replaces the initial latent with the saved one, moves the scheduler to the next step and restores the
generator, so the finished video equals the uninterrupted run.

Writes are atomic (temporary sibling + ``os.replace``): a process killed while writing leaves the previous
checkpoint intact, never a torn file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from mimicmotion.errors import ConfigError

CHECKPOINT_NAME = "latents.safetensors"
FORMAT_VERSION = "1"


@dataclass
class LatentCheckpoint:
    step: int  # index of the last completed step
    latents: torch.Tensor
    generator_state: Optional[torch.Tensor]
    fingerprint: str

    @property
    def next_step(self) -> int:
        return self.step + 1


def render_fingerprint(**parts) -> str:
    """sha256 over the render's determining inputs. Arrays and tensors are hashed by dtype, shape and
    bytes; everything else by its JSON form (keys sorted), so equal settings give equal fingerprints."""
    digest = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        digest.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous().numpy()
        if isinstance(value, np.ndarray):
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def checkpoint_path(folder) -> Path:
    return Path(folder) / CHECKPOINT_NAME


def save_latent_checkpoint(folder, step: int, latents: torch.Tensor, fingerprint: str,
                           generator: Optional[torch.Generator] = None) -> Path:
    """Atomically write the latent after ``step`` (and the generator state) to ``folder``."""
    from safetensors.torch import save_file

    if step < 0:
        raise ConfigError(f"checkpoint step must be >= 0 (got {step})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"latents": latents.detach().cpu().contiguous()}
    if generator is not None:
        tensors["generator_state"] = generator.get_state().clone()
    out = checkpoint_path(folder)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"step": str(step), "fingerprint": fingerprint,
                                              "format": FORMAT_VERSION})
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def load_latent_checkpoint(folder, fingerprint: Optional[str] = None) -> Optional[LatentCheckpoint]:
    """The checkpoint in ``folder``, or None when there is none. A checkpoint made for a different render
    (fingerprint mismatch) raises ConfigError rather than silently mixing two renders."""
    from safetensors import safe_open

    path = checkpoint_path(folder)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise ConfigError(f"latent checkpoint {path} is unreadable ({exc}); delete it to start the render over") \
            from exc
    if meta.get("format") != FORMAT_VERSION or "latents" not in tensors or "step" not in meta:
        raise ConfigError(f"{path} is not a latent checkpoint of this version; delete it to start over")
    saved = meta.get("fingerprint", "")
    if fingerprint is not None and saved != fingerprint:
        raise ConfigError(f"the latent checkpoint in {Path(folder)} belongs to a different render (other inputs "
                          "or parameters); use another checkpoint folder or delete it to start over")
    return LatentCheckpoint(step=int(meta["step"]), latents=tensors["latents"],
                            generator_state=tensors.get("generator_state"), fingerprint=saved)


def restore_state(pipe, state, checkpoint: LatentCheckpoint, generator: Optional[torch.Generator] = None) -> int:
    """Put a freshly prepared ``state`` at the checkpoint: latent, scheduler position and generator.
    Returns the step to continue from."""
    num_steps = len(state.timesteps)
    if checkpoint.next_step > num_steps:
        raise ConfigError(f"the latent checkpoint is at step {checkpoint.next_step} but the render has only "
                          f"{num_steps} steps")
    if tuple(checkpoint.latents.shape) != tuple(state.latents.shape):
        raise ConfigError(f"the latent checkpoint has shape {tuple(checkpoint.latents.shape)}, the render needs "
                          f"{tuple(state.latents.shape)}; delete the checkpoint folder to start over")
    state.latents = checkpoint.latents.to(device=state.latents.device, dtype=state.latents.dtype)
    # The Euler scheduler counts steps internally; prepare() reset it, so start it at the next step.
    pipe.scheduler.set_begin_index(checkpoint.next_step)
    if generator is not None and checkpoint.generator_state is not None:
        generator.set_state(checkpoint.generator_state)
    return checkpoint.next_step


@torch.no_grad()
def denoise(pipe, state, executor: Callable, *, generator: Optional[torch.Generator] = None,
            checkpoint_dir=None, fingerprint: str = "", on_step_end: Optional[Callable] = None) -> torch.Tensor:
    """The denoising loop of ``MimicMotionPipeline.__call__`` with any tile executor, resumable.

    With ``checkpoint_dir`` the loop first resumes from a checkpoint there (if one exists for the same
    ``fingerprint``) and writes one after every step. ``on_step_end(step, latents)`` runs after each step
    (after its checkpoint is written). Returns the final latents (1, F, 4, h, w).
    """
    start = 0
    if checkpoint_dir is not None:
        saved = load_latent_checkpoint(checkpoint_dir, fingerprint)
        if saved is not None:
            start = restore_state(pipe, state, saved, generator)
    for i in range(start, len(state.timesteps)):
        t = state.timesteps[i]
        outputs = executor(pipe.model_input(state, i), t, state.cond, state.tiles)
        pipe.finish_step(state, i, outputs)
        if checkpoint_dir is not None:
            save_latent_checkpoint(checkpoint_dir, i, state.latents, fingerprint, generator)
        if on_step_end is not None:
            on_step_end(i, state.latents)
    return state.latents
