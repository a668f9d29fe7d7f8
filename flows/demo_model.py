"""Prefect flow `demo_model`: how the shipped demo model is made, end to end, with this project's own tools.

    python flows/demo_model.py --work /tmp/demo-build --vae-steps 3000 --train-steps 2400 --workers 2

synthetic dancers (train/test split) -> `curate` flow (sidecar poses) -> VAE pre-training on the training
frames -> base folder + random UNet/PoseNet -> `train` flow (Ray Train workers) -> `evaluate` flow on the
test split against the two baselines -> (with --ship) the weights and model card into
mimicmotion/assets/demo_model/. Every stage writes into ``work`` and is skipped when its output exists,
so a re-run resumes (training itself resumes from its latest checkpoint). ``--continue-from`` trains on from
a finished demo model instead (its VAE and UNet; the VAE pre-training is skipped, ``--vae-decoder-steps``
trains its decoder on) and reports the totals:

    python flows/demo_model.py --work /tmp/demo-more --continue-from mimicmotion/assets/demo_model \
        --train-steps 1600 --train-seed 1 --ship

``--decay-steps N`` lowers the learning rate linearly towards 0 over the run's last N steps (e.g. a final
phase of a continued model). ``--adapt-decoder-steps N`` then samples the trained model on training clips
(as the evaluation renders) and trains the VAE decoder N steps to decode those latents into the true
frames (encoder frozen; `demo_model.adapt_decoder`), scored before and after on samples of validation clips
(the first clips of ``--adapt-validation-clips`` test videos past the ``--eval-clips`` the evaluation takes;
``--adapt-temporal`` trains the decoder's time convolutions too); with ``--train-steps 0`` a finished model
keeps its UNet and only its decoder is adapted:

    python flows/demo_model.py --work /tmp/demo-adapt --continue-from mimicmotion/assets/demo_model \
        --train-steps 0 --adapt-decoder-steps 1500 --ship

``--vae-downscale 4`` builds a new model around a VAE that downsamples by 4 instead of 8 (see
benchmarks/RESULTS.md). A work folder holds one continuation: continuing another model there is refused (use a
fresh ``--work``); re-running the same command, also after ``--ship`` replaced the model it started from,
resumes.

``--vae-continue-steps N`` trains a finished model's whole VAE (encoder too) N more steps first; its latents
move, so the UNet then trains on them (``--train-steps`` >= 1 is required). ``--device cuda`` runs every stage
(VAE training, the UNet through the train flow with one GPU per worker, decoder pairs and adaptation, the
evaluation) on a GPU; a device this machine lacks is refused before anything runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from mimicmotion import demo_model as dm  # noqa: E402
from mimicmotion.errors import ConfigError  # noqa: E402


def _train_vae(synth_dir: str, out: Path, make_vae, steps: int, seed: int, label: str, *, set_scale: bool,
               batch_seed: int, record: Optional[dict] = None, device: str = "cpu", **options) -> dict:
    """Train the VAE ``make_vae()`` returns on the synthetic training frames (``dm.pretrain_vae`` with
    ``options``, batches drawn with ``batch_seed``) and save it with its metrics into ``out`` in one rename;
    an ``out`` saved by an earlier run is not trained again (its metrics are returned); one saved after another
    number of steps is refused (later stages were built on it). ``set_scale``: set the
    scaling factor from the latents (after pre-training; a decoder-only stage keeps the factor the UNet was
    trained with); ``record``: more entries for the saved metrics; ``device``: where it trains (saved from the
    CPU)."""
    import torch

    if _saved(out):
        metrics = json.loads((out / "metrics.json").read_text())
        if metrics.get("step", steps) != steps:
            raise ConfigError(f"{out} holds a {label} stage trained {metrics['step']} steps, but this run asks for "
                              f"{steps}: ask for {metrics['step']} to go on with this work folder, or give a new work "
                              f"folder for a model made with {steps}")
        return metrics
    torch.manual_seed(seed)
    frames = dm.collect_frames(sorted(Path(synth_dir, "train").glob("*.mp4")))
    held = dm.collect_frames(sorted(Path(synth_dir, "test").glob("*.mp4")), every=40)
    vae = make_vae().to(device)
    start = time.perf_counter()
    metrics = dm.pretrain_vae(vae, frames, held_out=held, steps=steps, seed=batch_seed, batch_size=8, crop=64,
                              log=lambda m: get_run_logger().info("%s %s", label, m), **options)
    vae.to("cpu")
    metrics["scaling_factor"] = (dm.set_scaling_factor(vae, metrics["latent_std"]) if set_scale
                                 else vae.config.scaling_factor)
    metrics.update(frames=int(len(frames)), seconds=time.perf_counter() - start, **(record or {}))
    _save_vae(vae, metrics, out)
    return metrics


def _saved(out: Path) -> bool:
    """Whether an earlier run already saved a VAE stage into ``out``."""
    return (out / "config.json").is_file()


def _save_vae(vae, metrics: dict, out: Path) -> None:
    """``vae`` and its metrics.json into ``out`` in one rename."""
    tmp = out.with_name(out.name + ".tmp")
    vae.save_pretrained(tmp)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tmp.replace(out)


@task(name="pretrain-vae", cache_policy=NO_CACHE)
def pretrain_vae_task(synth_dir: str, out_dir: str, steps: int, seed: int, device: str = "cpu",
                      downscale: int = 8) -> dict:
    return _train_vae(synth_dir, Path(out_dir), lambda: dm.demo_components(seed, downscale)["vae"], steps, seed,
                      "vae", set_scale=True, batch_seed=seed, device=device, lr=5e-4)


@task(name="finetune-vae-decoder", cache_policy=NO_CACHE)
def finetune_vae_decoder_task(synth_dir: str, vae_dir: str, out_dir: str, steps: int, seed: int,
                              ssim_weight: float, record: Optional[dict] = None, device: str = "cpu") -> dict:
    """Train the pre-trained VAE's decoder further with an SSIM term, its encoder frozen: the latents (and a
    UNet trained on them) stay valid, the reconstructions sharpen. ``record``: more entries for its metrics."""
    from diffusers import AutoencoderKLTemporalDecoder

    return _train_vae(synth_dir, Path(out_dir), lambda: AutoencoderKLTemporalDecoder.from_pretrained(vae_dir),
                      steps, seed, "vae decoder", set_scale=False, batch_seed=seed + 1,
                      record=dict(decoder_only=True, ssim_weight=ssim_weight, **(record or {})), device=device, lr=2e-4,
                      warmup_steps=20, ssim_weight=ssim_weight, train_encoder=False)


@task(name="continue-vae", cache_policy=NO_CACHE)
def continue_vae_task(synth_dir: str, vae_dir: str, out_dir: str, steps: int, seed: int, ssim_weight: float,
                      record: Optional[dict] = None, device: str = "cpu") -> dict:
    """Train a finished model's whole VAE (encoder included) further: the latents move, so the UNet must be
    trained on after it. The scaling factor is kept (the UNet learnt at that scale). ``record``: more entries
    for its metrics."""
    from diffusers import AutoencoderKLTemporalDecoder

    return _train_vae(synth_dir, Path(out_dir), lambda: AutoencoderKLTemporalDecoder.from_pretrained(vae_dir),
                      steps, seed, "vae continued", set_scale=False, batch_seed=seed + 2,
                      record=dict(whole_vae=True, ssim_weight=ssim_weight, **(record or {})), device=device, lr=3e-4,
                      warmup_steps=50, ssim_weight=ssim_weight, train_encoder=True)


@task(name="sample-decoder-pairs", cache_policy=NO_CACHE)
def sample_decoder_pairs_task(catalog: str, base_dir: str, checkpoint: str, out_dir: str, clips: int,
                              guidance: float, steps: int, seed: int, device: str = "cpu", max_frames: int = 24,
                              split: str = "train", offset: int = 0) -> Optional[str]:
    """The trained model's latents for the first ``max_frames`` frames of the first clip of ``clips`` videos of
    ``split`` (from the ``offset``-th in clip-id order), as the evaluation renders them, with their true frames.
    None when the split has no such clips."""
    from mimicmotion.evaluation import select_clips

    sql, params = dm.split_sql(split, first_clip_only=True, limit=clips, offset=offset)
    clip_ids = select_clips(catalog, sql=sql, params=params)
    if not clip_ids:
        get_run_logger().info("no %s clips from the %d-th on to sample decoder pairs from", split, offset)
        return None
    return str(dm.write_decoder_pairs(catalog, base_dir, checkpoint, clip_ids, out_dir, steps=steps,
                                      guidance=guidance, seed=seed, max_frames=max_frames, log=get_run_logger().info,
                                      device=device))


@task(name="adapt-decoder", cache_policy=NO_CACHE)
def adapt_decoder_task(pairs_dir: str, vae_dir: str, out_dir: str, steps: int, seed: int,
                       held_out_every: int = dm.ADAPT_HELD_OUT_EVERY, device: str = "cpu",
                       held_out_dir: Optional[str] = None, temporal: bool = False) -> dict:
    """Adapt the VAE decoder to the sampled pairs (``dm.adapt_decoder``) and save it with its metrics into
    ``out_dir`` in one rename. Scored before and after on ``held_out_dir``'s pairs (clips of videos the UNet did
    not train on) when given, all of ``pairs_dir`` adapted on; else every ``held_out_every``-th pair of
    ``pairs_dir`` is held out (clips of training videos, which the UNet renders better: a gain there can
    overstate one on unseen videos). An ``out_dir`` an earlier run saved from the same VAE, pairs and settings is
    kept; one from others is moved to ``<out_dir>-replaced-<n>`` and the decoder adapted again. ``temporal``: its
    time taps train too (``dm.adapt_decoder``)."""
    from diffusers import AutoencoderKLTemporalDecoder

    out = Path(out_dir)
    request = dict(steps=steps, seed=seed, held_out_every=held_out_every if held_out_dir is None else None,
                   vae=dm.folder_digest(vae_dir), pairs=dm.pairs_digest(pairs_dir))
    if held_out_dir is not None:
        request["held_out_pairs"] = dm.pairs_digest(held_out_dir)
    if temporal:  # only when asked: frame-wise adaptations saved before the option existed stay current
        request["temporal"] = True
    if _saved(out):
        metrics = json.loads((out / "metrics.json").read_text())
        if metrics.get("request") == request:
            return metrics
        aside = dm.unused_numbered_path(out.with_name(f"{out.name}-replaced"))
        out.replace(aside)
        get_run_logger().info("%s was adapted with other pairs or settings; moved to %s", out, aside)
    pairs = dm.load_decoder_pairs(pairs_dir)
    if held_out_dir is not None:
        train, held, source = pairs, dm.load_decoder_pairs(held_out_dir), "validation"
    else:
        (train, held), source = dm.held_out_split(pairs, held_out_every), "training"
    vae = AutoencoderKLTemporalDecoder.from_pretrained(vae_dir).to(device)
    metrics = dm.adapt_decoder(vae, train, steps=steps, seed=seed, held_out=held, temporal=temporal,
                               log=lambda m: get_run_logger().info("adapt decoder %s", m))
    metrics = dict(metrics, request=request, held_out_source=source)
    _save_vae(vae.to("cpu"), metrics, out)
    return metrics


@flow(name="demo_model", log_prints=True)
def demo_model(work: str, videos: int = 160, seed: int = 0, vae_steps: int = 3000, train_steps: int = 2400,
               workers: int = 2, lr: float = 2e-4, eval_steps: int = 10, eval_clips: int = 16, eval_frames: int = 16,
               ship: bool = False, vae_decoder_steps: int = 0, continue_from: Optional[str] = None,
               train_seed: Optional[int] = None, decay_steps: int = 0, vae_decoder_ssim_weight: float = 0.5,
               adapt_decoder_steps: int = 0, adapt_clips: int = 128, adapt_guidance: float = 2.0,
               adapt_validation_clips: int = 16, vae_continue_steps: int = 0, vae_continue_ssim_weight: float = 2.0,
               device: str = "cpu", vae_downscale: Optional[int] = None, extra_train_videos: int = 0,
               latent_cache_from: Optional[str] = None, adapt_temporal: bool = False) -> dict:
    from flows.curate import curate
    from flows.evaluate import evaluate
    from flows.train import train
    from mimicmotion.synthetic import generate_dataset
    from mimicmotion.training.trainer import write_json_atomic

    if train_steps < 0 or (train_steps == 0 and not continue_from):
        raise ConfigError(f"train_steps must be >= 1, or 0 with continue_from (keep a finished model's UNet, e.g. to "
                          f"adapt its decoder); got {train_steps}")
    if vae_continue_steps > 0 and (not continue_from or train_steps < 1):
        raise ConfigError("vae_continue_steps trains a finished model's whole VAE, which moves its latents: it needs "
                          "continue_from and train_steps >= 1 (the UNet must learn the new latents); got "
                          f"continue_from={continue_from!r}, train_steps={train_steps}")
    for name, value in (("extra_train_videos", extra_train_videos), ("adapt_validation_clips", adapt_validation_clips)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if latent_cache_from is not None and not Path(latent_cache_from).is_dir():
        raise ConfigError(f"latent_cache_from: {latent_cache_from} is not a folder; give an earlier build's "
                          f"run/latent_cache folder (or leave it out: the frames are then encoded as they come)")
    device = dm.check_device(device)
    root = Path(work)
    if continue_from:
        if vae_downscale is not None:
            raise ConfigError("vae_downscale picks a new model's architecture; a continuation keeps its start model's "
                              f"(drop vae_downscale, or build a new model without continue_from); got {vae_downscale}")
        dm.check_continuation(root, continue_from)  # before anything runs: a folder of another run is refused
    else:
        vae_downscale = dm.check_vae_downscale(root / "vae", 8 if vae_downscale is None else vae_downscale)
    synth, catalog = root / "synth", root / "catalog"
    generate_dataset(synth, videos, seed=seed, width=dm.DEMO_WIDTH, height=dm.DEMO_HEIGHT,
                     num_frames=dm.DEMO_VIDEO_FRAMES, fps=dm.DEMO_VIDEO_FPS)
    inputs = [str(synth / "train"), str(synth / "test")]
    if extra_train_videos:
        # more training data only (the next seed's videos, none held out): the test split stays the same clips,
        # so the scores stay comparable with a model trained without them
        extra = root / "synth-extra"
        generate_dataset(extra, extra_train_videos, seed=seed + 1, test_fraction=0.0, width=dm.DEMO_WIDTH,
                         height=dm.DEMO_HEIGHT, num_frames=dm.DEMO_VIDEO_FRAMES, fps=dm.DEMO_VIDEO_FPS)
        inputs.append(str(extra / "train"))
    curate(inputs=inputs, catalog=str(catalog), pose_source="sidecar", contact_sheet_tiles=12, **dm.DEMO_CURATION)
    if continue_from:
        # a finished demo model (its VAE, CLIP and UNet) trained on: copied first, so shipping the result
        # over the folder it came from cannot change what a resumed run starts from
        base, init = dm.demo_model_paths(dm.copy_demo_model(continue_from, root / "start"))
        prior = dm.prior_training(root / "start")
        vae_metrics, vae_dir = prior["vae"], base / "vae"
    else:
        prior = None
        vae_metrics = pretrain_vae_task(str(synth), str(root / "vae"), vae_steps, seed, device, vae_downscale)
        vae_dir = root / "vae"
    if vae_continue_steps > 0:
        # encoder and decoder train on, so the latents move (the UNet trains on below); an adapted decoder's
        # record goes with the decoder it describes
        vae_metrics = {k: v for k, v in vae_metrics.items() if k != "adapted"}
        vae_metrics["continued"] = continue_vae_task(
            str(synth), str(vae_dir), str(root / "vae-continued"), vae_continue_steps, seed,
            ssim_weight=vae_continue_ssim_weight,
            record=dict(continued_from=vae_metrics["continued"]) if vae_metrics.get("continued") else None,
            device=device)
        vae_dir = root / "vae-continued"
    if vae_decoder_steps > 0:
        # the encoder, so the latents a UNet learnt on, stays as it is; a continued model's earlier decoder
        # stage is kept in the record
        earlier = vae_metrics.get("decoder")
        vae_metrics = dict(vae_metrics, decoder=finetune_vae_decoder_task(
            str(synth), str(vae_dir), str(root / "vae-decoder"), vae_decoder_steps, seed,
            ssim_weight=vae_decoder_ssim_weight, record=dict(continued_from=earlier) if earlier else None,
            device=device))
        vae_dir = root / "vae-decoder"
    if not continue_from:
        from diffusers import AutoencoderKLTemporalDecoder

        vae = AutoencoderKLTemporalDecoder.from_pretrained(vae_dir)
        # pretrain_vae already holds them; this also repairs a VAE pre-trained before it did (a no-op otherwise)
        dm.hold_decoder_framewise(vae)
        base, init = dm.build_initial_model(root / "init", vae, seed)
    elif vae_decoder_steps > 0 or vae_continue_steps > 0:
        base = dm.base_with_vae(base, vae_dir, root / "base")
    train_sql, train_params = dm.split_sql("train")
    train_config = dict(dm.DEMO_TRAIN_CONFIG, lr=lr, seed=seed if train_seed is None else train_seed,
                        decay_steps=decay_steps,
                        latent_cache_frames=dm.demo_latent_cache_frames(videos + extra_train_videos))
    if latent_cache_from is not None:  # an earlier build's posteriors (same encoder): those frames are not encoded
        train_config["latent_cache_from"] = [str(Path(latent_cache_from).resolve())]
    if train_steps > 0:
        run = train(catalog=str(catalog), base_model=str(base), checkpoint=str(init), run_dir=str(root / "run"),
                    workers=workers, steps=train_steps, sql=train_sql, query_params=train_params, torch_threads=1,
                    config=train_config, use_gpu=device.startswith("cuda"))
        run = dict(run, config=train_config, **dm.training_record(run["metrics"], prior=prior and prior["train"]))
    else:  # no more UNet steps: the start model as it is (e.g. only its decoder adapted), with its record
        run = dict(prior["train"], model=str(init))
        for key, name in (("metrics", "metrics.csv"), ("loss_curve", "loss_curve.png")):
            if (root / "start" / name).is_file():
                run[key] = str(root / "start" / name)
    if adapt_decoder_steps > 0:
        # pairs drawn with seeds apart from the evaluation's; sampled as the evaluation renders
        pairs = sample_decoder_pairs_task(str(catalog), str(base), run["model"], str(root / "decoder-pairs"),
                                          adapt_clips, adapt_guidance, eval_steps, seed + 1000, device, eval_frames)
        if pairs is None:
            raise ConfigError(f"no training clips in {catalog} to sample the decoder adaptation's pairs from")
        # scored on validation clips: the first clips of test videos the evaluation leaves out (none when the test
        # split has no more videos than it evaluates; then pairs of training videos are held out instead)
        validation = (sample_decoder_pairs_task(str(catalog), str(base), run["model"],
                                                str(root / "decoder-pairs-validation"), adapt_validation_clips,
                                                adapt_guidance, eval_steps, seed + 2000, device, eval_frames,
                                                split="test", offset=eval_clips)
                      if adapt_validation_clips > 0 else None)
        vae_metrics = dict(vae_metrics, adapted=dict(
            adapt_decoder_task(pairs, str(base / "vae"), str(root / "vae-adapted"), adapt_decoder_steps, seed,
                               device=device, held_out_dir=validation, temporal=adapt_temporal),
            guidance=adapt_guidance, sampler_steps=eval_steps))
        base = dm.base_with_vae(base, root / "vae-adapted", root / "base-adapted")
    test_sql, test_params = dm.split_sql("test", first_clip_only=True, limit=eval_clips)
    scores = evaluate(catalog=str(catalog), out_dir=str(root / "eval"), base_model=str(base),
                      checkpoint=run["model"], sql=test_sql, params=test_params,
                      baselines=["copy_reference", "blank_pose", "vae_reconstruction"], resolution=dm.DEMO_RESOLUTION,
                      tile_size=dm.DEMO_TILE_SIZE, tile_overlap=dm.DEMO_TILE_OVERLAP, steps=eval_steps, seed=seed,
                      max_frames=eval_frames, device=device)
    vae_config = json.loads((Path(base) / "vae" / "config.json").read_text())
    vae_metrics = dict(vae_metrics, downscale=dm.vae_downscale(vae_config))
    summary = dict(data=dict(videos=videos, seed=seed, extra_train_videos=extra_train_videos), vae=vae_metrics,
                   train=run, evaluation=scores.get("summary", scores))
    write_json_atomic(root / "summary.json", summary, default=str)
    if ship:
        card = dm.model_card(summary)
        record = [root / "summary.json", root / "vae" / "metrics.json",
                  Path(run.get("metrics") or ""), Path(run.get("loss_curve") or "")]  # Path("") is no file
        dm.ship_model(base, run["model"], card, extra_files=[p for p in record if p.is_file()])
        dm.record_shipped(root, run["model"])
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="build the demo model (flow `demo_model`)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--videos", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--train-steps", type=int, default=2400,
                    help="UNet steps; 0 with --continue-from keeps the start model's UNet (e.g. to adapt its decoder)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--vae-decoder-steps", type=int, default=0,
                    help="then train the VAE decoder alone this many steps with an SSIM term (encoder frozen); "
                         "with --continue-from, the start model's decoder")
    ap.add_argument("--vae-decoder-ssim-weight", type=float, default=0.5,
                    help="weight of the (1 - SSIM) term of the decoder stage's loss (L1 + MSE + weight x (1 - SSIM))")
    ap.add_argument("--vae-continue-steps", type=int, default=0,
                    help="with --continue-from: train the start model's whole VAE (encoder too) this many more "
                         "steps before the UNet trains on its new latents (needs --train-steps >= 1)")
    ap.add_argument("--vae-continue-ssim-weight", type=float, default=2.0,
                    help="weight of the (1 - SSIM) term of that stage's loss")
    ap.add_argument("--eval-steps", type=int, default=10, help="denoising steps of the evaluation renders")
    ap.add_argument("--eval-clips", type=int, default=16, help="test clips evaluated (one per test video)")
    ap.add_argument("--eval-frames", type=int, default=16, help="frames per evaluated clip (reference included)")
    ap.add_argument("--continue-from", metavar="DIR",
                    help="train on from a finished demo model folder (e.g. mimicmotion/assets/demo_model): its "
                         "VAE, CLIP and UNet are the start; the VAE pre-training is skipped")
    ap.add_argument("--train-seed", type=int, help="seed of the training draws (default: --seed); give a new one "
                                                   "with --continue-from so the run does not replay the same noise")
    ap.add_argument("--decay-steps", type=int, default=0,
                    help="the last this many training steps lower the lr linearly towards 0 (default 0: constant)")
    ap.add_argument("--adapt-decoder-steps", type=int, default=0,
                    help="after training, adapt the VAE decoder (encoder frozen) this many steps to the trained "
                         "model's own samples of training clips (default 0: off)")
    ap.add_argument("--adapt-clips", type=int, default=128, help="training clips sampled for the decoder adaptation")
    ap.add_argument("--adapt-guidance", type=float, default=2.0, help="guidance of those samples")
    ap.add_argument("--adapt-validation-clips", type=int, default=16,
                    help="test videos past the --eval-clips evaluated whose first clips score the adaptation "
                         "(0, or none left: every 16th training pair is held out instead)")
    ap.add_argument("--adapt-temporal", action="store_true",
                    help="let the adapted decoder's time convolutions use neighbouring frames of a decode chunk "
                         "(their outer taps train, from zero in a frame-wise decoder); default: each frame decodes "
                         "on its own")
    ap.add_argument("--device", default="cpu", help="where every stage runs: cpu, or cuda / cuda:N on a machine with a "
                                                  "GPU (the UNet then trains with one GPU per --workers)")
    ap.add_argument("--vae-downscale", type=int, choices=dm.DEMO_DOWNSCALES,
                    help="a new model's VAE downsampling: 8 (default, as SVD) or 4 (latents 48 x 32: keeps textures "
                         "an 8x latent loses; the UNet and PoseNet follow); a continuation keeps its start model's")
    ap.add_argument("--extra-train-videos", type=int, default=0,
                    help="this many more procedural videos (the next seed's) in the training split only; the test "
                         "split stays the --videos dataset's (default 0)")
    ap.add_argument("--latent-cache-from", metavar="DIR",
                    help="an earlier build's run/latent_cache folder (same VAE encoder: e.g. the build of the "
                         "--continue-from model): its frames of this build's clips are not encoded again")
    ap.add_argument("--ship", action="store_true", help="copy the result into mimicmotion/assets/demo_model/")
    args = ap.parse_args(argv)
    summary = demo_model(args.work, args.videos, args.seed, args.vae_steps, args.train_steps, args.workers, args.lr,
                         eval_steps=args.eval_steps, eval_clips=args.eval_clips, eval_frames=args.eval_frames,
                         ship=args.ship, vae_decoder_steps=args.vae_decoder_steps,
                         continue_from=args.continue_from, train_seed=args.train_seed,
                         decay_steps=args.decay_steps, vae_decoder_ssim_weight=args.vae_decoder_ssim_weight,
                         adapt_decoder_steps=args.adapt_decoder_steps, adapt_clips=args.adapt_clips,
                         adapt_guidance=args.adapt_guidance,
                         adapt_validation_clips=args.adapt_validation_clips, vae_continue_steps=args.vae_continue_steps,
                         vae_continue_ssim_weight=args.vae_continue_ssim_weight, device=args.device,
                         vae_downscale=args.vae_downscale, extra_train_videos=args.extra_train_videos,
                         latent_cache_from=args.latent_cache_from, adapt_temporal=args.adapt_temporal)
    print(json.dumps(summary.get("evaluation"), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
