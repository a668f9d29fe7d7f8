"""What the decoder adaptation and the sampler settings can still buy, measured on a demo_model work folder's
decoder pairs (``<work>/decoder-pairs``: the trained model's latents for training clips with their true frames).

    python benchmarks/decoder_probe.py adapt --work W --variant '{"ssim_weight": 4}' --json out.json
    python benchmarks/decoder_probe.py sampler --work W --checkpoint CK --settings 10,2 20,2 10,1
    python benchmarks/decoder_probe.py margin --work W --vae W/vae

The held-out pairs are the flow's (every 16th, ``adapt_decoder_task``), so ``adapt`` scores are comparable with
the flow's ``vae-adapted/metrics.json``. ``adapt``: adapts ``<work>/vae`` (the decoder before any adaptation)
with ``demo_model.adapt_decoder``'s settings changed by ``--variant``; prints the held-out scores before and
after. ``sampler``: samples the held-out clips again at other ``steps,guidance`` (each clip with the seed its
pair was drawn with) and decodes them with ``<work>/base-adapted``'s VAE: ``10,2`` reproduces the flow's
held-out score. ``margin``: the model's score (its pairs decoded with ``--vae``) against copying the reference,
on all pairs and on the held-out ones: the model's margin on clips its UNet trained on, to set beside the test
split's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def adapt_variant(vae, pairs: list, variant: dict, steps: int, seed: int = 0) -> dict:
    """Adapt ``vae``'s decoder (in place) with ``variant`` over ``adapt_decoder``'s defaults; its metrics."""
    from mimicmotion import demo_model as dm

    train, held = dm.held_out_split(pairs)
    start = time.perf_counter()
    metrics = dm.adapt_decoder(vae, train, steps=steps, seed=seed, held_out=held, **variant)
    return dict(metrics, variant=variant, wall_s=time.perf_counter() - start)


def copy_reference_scores(pairs: list) -> dict:
    """Mean SSIM / PSNR of repeating each pair's reference over the frames the evaluation scores (2..)."""
    from mimicmotion.metrics import psnr, ssim

    ssims, psnrs = [], []
    for pair in pairs:
        frames = pair["frames"][2:]
        copied = np.repeat(pair["frames"][:1], len(frames), axis=0)
        ssims.append(ssim(copied, frames))
        psnrs.append(psnr(copied, frames))
    return dict(ssim=float(np.mean(ssims)), psnr=float(np.mean(psnrs)))


def margins(vae, pairs: list) -> dict:
    """The model (pairs decoded with ``vae``) and copy-reference, on all pairs and on the held-out ones."""
    from mimicmotion import demo_model as dm

    _, held = dm.held_out_split(pairs)
    out = {}
    for name, chosen in (("all", pairs), ("held_out", held)):
        model, copy = dm.pair_scores(vae, chosen), copy_reference_scores(chosen)
        out[name] = dict(clips=len(chosen), model=model, copy_reference=copy,
                         ssim_margin=model["ssim"] - copy["ssim"])
    return out


def sampler_scores(work: Path, checkpoint: str, settings: list) -> dict:
    """The held-out clips sampled at each ``(steps, guidance)``, decoded with the adapted base's VAE."""
    import torch

    from mimicmotion import demo_model as dm
    from mimicmotion.evaluation import clip_rows, load_eval_clip
    from mimicmotion.loading import load_pipeline

    manifest = json.loads((work / "decoder-pairs" / dm.PAIRS_MANIFEST).read_text())
    identity = manifest["identity"]
    # the clips of the pairs load_decoder_pairs reads, in its order
    _, held = dm.held_out_split([path.stem for path in dm.pair_files(work / "decoder-pairs")])
    catalog = str(work / "catalog")
    rows = clip_rows(catalog, held)
    clips = [load_eval_clip(catalog, c, rows[c], identity["resolution"], identity["max_frames"]) for c in held]
    pipe = load_pipeline(work / "base-adapted", checkpoint, dtype=torch.float32, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for steps, guidance in settings:
        start = time.perf_counter()
        pairs = [dm.decoder_pair(pipe, clip, steps=steps, guidance=guidance, seed=manifest["seeds"][c],
                                 tile_size=identity["tile_size"], tile_overlap=identity["tile_overlap"])
                 for c, clip in zip(held, clips)]
        out[f"{steps},{guidance:g}"] = dict(dm.pair_scores(pipe.vae, pairs), clips=len(pairs),
                                            wall_s=time.perf_counter() - start)
        print(f"{steps},{guidance:g}", out[f"{steps},{guidance:g}"], flush=True)
    return out


def _setting(text: str) -> tuple:
    try:
        steps, guidance = text.split(",")
        return int(steps), float(guidance)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STEPS,GUIDANCE (e.g. 10,2), got {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    for mode in ("adapt", "sampler", "margin"):
        p = sub.add_parser(mode)
        p.add_argument("--work", required=True, type=Path, help="a demo_model flow's work folder")
        p.add_argument("--json", type=Path, help="also write the result here")
        if mode == "adapt":
            p.add_argument("--variant", default="{}", help="adapt_decoder settings as JSON, e.g. '{\"lr\": 3e-4}'")
            p.add_argument("--steps", type=int, default=2000)
        elif mode == "sampler":
            p.add_argument("--checkpoint", required=True, help="the UNet checkpoint the pairs were sampled with")
            p.add_argument("--settings", nargs="+", type=_setting, default=[(10, 2.0)])
        else:
            p.add_argument("--vae", required=True, type=Path, help="the VAE folder to decode the pairs with")
    args = ap.parse_args(argv)

    from diffusers import AutoencoderKLTemporalDecoder

    from mimicmotion import demo_model as dm
    from mimicmotion.errors import ConfigError

    try:
        if args.mode == "sampler":
            result = sampler_scores(args.work, args.checkpoint, args.settings)
        else:
            pairs = dm.load_decoder_pairs(args.work / "decoder-pairs")
            if args.mode == "adapt":
                variant = json.loads(args.variant)
                if not isinstance(variant, dict):
                    raise ConfigError(f"--variant must be a JSON object of adapt_decoder settings, got {args.variant}")
                vae = AutoencoderKLTemporalDecoder.from_pretrained(args.work / "vae")
                result = adapt_variant(vae, pairs, variant, args.steps)
            else:
                result = margins(AutoencoderKLTemporalDecoder.from_pretrained(args.vae), pairs)
    except (ConfigError, json.JSONDecodeError, TypeError) as err:
        print(f"decoder_probe: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
