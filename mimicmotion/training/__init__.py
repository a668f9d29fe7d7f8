"""Training (SPEC section 7). ``objective`` holds the loss's pure parts: hand-region weights, EDM noise and
preconditioning, condition dropout, conditioning noise augmentation, reference-first clips."""
from mimicmotion.training.objective import (
    add_noise,
    apply_condition_dropout,
    assemble_clip,
    augment_condition,
    condition_dropout_masks,
    denoised,
    diffusion_loss,
    edm_preconditioning,
    hand_region_mask,
    loss_weighting,
    loss_weights,
    sample_sigmas,
    unet_input,
)

__all__ = [
    "add_noise", "apply_condition_dropout", "assemble_clip", "augment_condition", "condition_dropout_masks",
    "denoised", "diffusion_loss", "edm_preconditioning", "hand_region_mask", "loss_weighting", "loss_weights",
    "sample_sigmas", "unet_input",
]
