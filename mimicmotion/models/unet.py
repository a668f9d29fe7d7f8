"""The SVD UNet with MimicMotion's pose injection (SPEC section 5).

MimicMotion adds the PoseNet features to the output of the UNet's ``conv_in`` and changes nothing else.
``PoseConditionedUNet`` is diffusers' ``UNetSpatioTemporalConditionModel`` with one extra optional forward
argument, ``pose_latents``; the addition happens in a forward hook on ``conv_in``, so the stock forward runs
unchanged, parameter names are the stock ones (``unet.*`` keys of the released checkpoint load directly) and
``from_config`` / ``from_pretrained`` work with an SVD ``unet/config.json``.

The features reach the hook through a per-thread slot keyed by the model instance, set for the duration of
one forward call and restored in a ``finally``: a call that fails, a call made from another thread, and a
nested (re-entrant) call on the same model each see only their own features. The slot lives outside the
module so ``copy.deepcopy`` (EMA copies) and pickling keep working.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel

from mimicmotion.errors import ConfigError

# thread -> {id(model): pose features waiting for that model's conv_in, or None}
_PENDING = threading.local()


def _slots() -> dict:
    slots = getattr(_PENDING, "slots", None)
    if slots is None:
        slots = _PENDING.slots = {}
    return slots


class PoseConditionedUNet(UNetSpatioTemporalConditionModel):
    """``UNetSpatioTemporalConditionModel`` whose forward also takes ``pose_latents`` (B*F, C0, h, w), added
    to the output of ``conv_in`` (C0 = ``block_out_channels[0]``). Without it the model computes exactly what
    the stock UNet computes."""

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        return_dict: bool = True,
        pose_latents: Optional[torch.Tensor] = None,
    ):
        if pose_latents is not None:
            pose_latents = self._check_pose_latents(sample, pose_latents)
        self._ensure_pose_hook()
        slots = _slots()
        key = id(self)
        # Save and restore rather than clear: a nested call on this model (before our conv_in ran) must
        # leave our features in place for us.
        had_previous = key in slots
        previous = slots.get(key)
        slots[key] = pose_latents
        try:
            return super().forward(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=return_dict)
        finally:
            if had_previous:
                slots[key] = previous
            else:
                slots.pop(key, None)

    def _check_pose_latents(self, sample: torch.Tensor, pose_latents: torch.Tensor) -> torch.Tensor:
        if pose_latents.ndim == 5:  # (B, F, C0, h, w) -> (B*F, C0, h, w), the layout conv_in produces
            pose_latents = pose_latents.flatten(0, 1)
        expected = (sample.shape[0] * sample.shape[1], self.config.block_out_channels[0], *sample.shape[-2:])
        if tuple(pose_latents.shape) != expected:
            raise ConfigError(
                f"pose_latents has shape {tuple(pose_latents.shape)} but this UNet needs {expected} for a sample of "
                f"shape {tuple(sample.shape)} (batch*frames, block_out_channels[0], latent height, latent width); "
                "compute them with PoseNet(noise_latent_channels=unet.config.block_out_channels[0]) on pose "
                "images of the output size"
            )
        return pose_latents

    def _ensure_pose_hook(self) -> None:
        # Installed lazily (no __init__ override keeps ConfigMixin's signature-based from_config intact); a
        # deepcopy carries the hook along, bound to the copy, so look for it on the current conv_in.
        for hook in self.conv_in._forward_hooks.values():
            if getattr(hook, "__func__", None) is PoseConditionedUNet._add_pose_latents and hook.__self__ is self:
                return
        self.conv_in.register_forward_hook(self._add_pose_latents)

    def _add_pose_latents(self, module, inputs, output):
        slots = _slots()
        key = id(self)
        pose_latents = slots.get(key)
        if pose_latents is None:
            return None
        slots[key] = None  # consumed: used by exactly one conv_in call
        return output + pose_latents.to(dtype=output.dtype)
