"""Distributed denoising over Ray actors with exact per-step progressive fusion (SPEC section 6).

Each :class:`TileWorker` actor loads the pipeline once (one GPU per actor when the cluster has GPUs, one CPU
otherwise) and keeps it resident. The driver computes the conditioning once (CLIP embedding, image latent,
PoseNet features) and sends it to every actor once per render. At every step the driver puts the model
input in the object store once, each actor runs the UNet for its block of tiles and returns their outputs,
and the driver fuses them in tile order with ``pipe.finish_step``: the same tile outputs give a
bit-identical fused latent, so the render equals the single-process one up to the UNet's own float noise.

Fault tolerance: when an actor dies (crash, OOM kill, ``ray.kill``), the executor starts a replacement,
sends it the conditioning and re-runs the dead actor's tiles for the current step; no completed step is
lost and the result equals the unfaulted run. VAE decoding is spread over the actors in chunks aligned to
``decode_chunk_size``, so it equals the local chunked decode.

The library (``mimicmotion``) never imports Ray; this module is the only place that does.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from mimicmotion.errors import ConfigError, MimicMotionError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSpec:
    """Where each actor loads the model from (paths must be readable on every node)."""

    base_model: str
    checkpoint: str
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")


def assign_tiles(num_tiles: int, num_workers: int) -> list[range]:
    """Contiguous, balanced blocks of tile indices, one per worker (the first ``num_tiles % n`` blocks get
    one extra tile). Workers beyond the tile count get empty blocks."""
    if num_workers < 1:
        raise ConfigError(f"the number of actors must be >= 1 (got {num_workers})")
    base, extra = divmod(num_tiles, num_workers)
    blocks, start = [], 0
    for k in range(num_workers):
        size = base + (1 if k < extra else 0)
        blocks.append(range(start, start + size))
        start += size
    return blocks


def decode_chunks(num_frames: int, decode_chunk_size: int) -> list[range]:
    """Frame ranges decoded in one VAE call each: exactly the chunks ``pipe.decode`` uses locally."""
    if decode_chunk_size < 1:
        raise ConfigError(f"decode_chunk_size must be >= 1 (got {decode_chunk_size})")
    return [range(i, min(i + decode_chunk_size, num_frames)) for i in range(0, num_frames, decode_chunk_size)]


class TileWorker:
    """Holds one resident pipeline (UNet, PoseNet, VAE) and runs tiles or decode chunks for the driver.
    Plain class so it can be tested without Ray; ``ray.remote(TileWorker)`` makes the actor."""

    def __init__(self, model: ModelSpec, device: Optional[str] = None, batch_guidance: bool = True,
                 tiles_per_batch: int = 1, torch_threads: Optional[int] = None):
        from mimicmotion.loading import load_pipeline

        if torch_threads:
            # CPU matmuls reduce in a thread-count-dependent order: match the driver's count to get the
            # same float noise as a local render (Ray starts actors with one thread per reserved CPU).
            torch.set_num_threads(torch_threads)
        from mimicmotion.pipeline import TileDenoiser

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pipe = load_pipeline(model.base_model, model.checkpoint, dtype=DTYPES[model.dtype], device=self.device)
        self.pipe.image_encoder = None  # conditioning is computed on the driver; free the CLIP encoder
        self.denoiser = TileDenoiser(self.pipe.unet, batch_guidance, tiles_per_batch)
        self.cond = None

    def set_conditioning(self, cond) -> bool:
        from mimicmotion.pipeline import Conditioning

        self.cond = Conditioning(**{k: v.to(self.device) for k, v in vars(cond).items()})
        return True

    @torch.no_grad()
    def denoise(self, model_input: torch.Tensor, t, tiles: Sequence[Sequence[int]]):
        """Outputs (on CPU) of the given tiles, and the seconds spent computing them."""
        if self.cond is None:
            raise MimicMotionError("tile worker has no conditioning: call set_conditioning first")
        start = time.perf_counter()
        outputs = self.denoiser(model_input.to(self.device), t, self.cond, tiles)
        outputs = [o.cpu() for o in outputs]
        return outputs, time.perf_counter() - start

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        return self.pipe.decode(latents.to(self.device), decode_chunk_size)

    def ping(self) -> str:
        return str(self.device)

    def node_id(self) -> str:
        """The Ray node this actor runs on (which machine of the cluster)."""
        import ray

        return ray.get_runtime_context().get_node_id()


@dataclass
class StepStats:
    """Timings of one distributed step (seconds)."""

    put_s: float  # driver: serialise the model input into the object store
    wall_s: float  # driver: from put to having every tile output back (includes put)
    compute_s: list = field(default_factory=list)  # per actor: UNet time inside the actor

    @property
    def overhead_s(self) -> float:
        """Time not explained by the slowest actor's compute: transfer, scheduling, stragglers' waits."""
        return self.wall_s - max(self.compute_s, default=0.0)


def ray_available_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


class RayTileExecutor:
    """``tile_executor`` for :class:`MimicMotionPipeline` backed by ``num_actors`` resident Ray actors.

    Use as a context manager (or call :meth:`close`) to free the actors. Ray must be initialised.
    ``use_gpus``: None = one GPU per actor when the cluster has enough GPUs, else CPU actors.
    ``max_restarts``: how many dead actors may be replaced over the executor's life before giving up.
    ``torch_threads``: intra-op threads per CPU actor (None: this process's own count, so that CPU actors
    give the frames a local render gives). CPU matmuls sum in a thread-count-dependent order, and the first
    Euler step scales that noise by sigma_max (700 for SVD-xt): on the demo model at 1 vs 2 threads two local
    renders differ by up to 24/255 after 2 steps, and at equal counts they are identical.
    ``start_timeout_s``: how long to wait for actors to start (Ray queues actors the cluster has no room
    for; this turns that wait into a clear error).
    """

    def __init__(self, model: ModelSpec, num_actors: int = 2, *, use_gpus: Optional[bool] = None,
                 cpus_per_actor: float = 1, batch_guidance: bool = True, tiles_per_batch: int = 1,
                 max_restarts: int = 3, torch_threads: Optional[int] = None, start_timeout_s: float = 300):
        import ray

        if num_actors < 1:
            raise ConfigError(f"actors must be >= 1 (got {num_actors})")
        if not ray.is_initialized():
            raise MimicMotionError("Ray is not initialised: call ray.init() (or use tasks.ray_render.ensure_ray)")
        gpus = ray_available_gpus()
        if use_gpus is None:
            use_gpus = gpus >= num_actors
        elif use_gpus and gpus < num_actors:
            raise ConfigError(f"{num_actors} GPU actors need {num_actors} GPUs; the Ray cluster has {gpus}")
        self.model = model
        self.num_actors = num_actors
        self.use_gpus = use_gpus
        self.max_restarts = max_restarts
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self.stats: list[StepStats] = []
        # SPREAD: one actor per node while there are nodes with room (more machines, more GPUs, more memory
        # bandwidth), and a replacement lands wherever room is left when a node is lost.
        self._options = dict(num_gpus=1 if use_gpus else 0, num_cpus=cpus_per_actor, max_restarts=0,
                             scheduling_strategy="SPREAD")
        if torch_threads is None and not use_gpus:
            torch_threads = torch.get_num_threads()
        self._worker_args = dict(device="cuda" if use_gpus else "cpu", batch_guidance=batch_guidance,
                                 tiles_per_batch=tiles_per_batch, torch_threads=torch_threads)
        self._cond = None
        self._cond_ref = None
        self.actors = [self._start_actor() for _ in range(num_actors)]
        try:
            self._wait_started(self.actors)  # fail early (bad model path, no room) with the real error
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- actors
    def _start_actor(self):
        import ray

        return ray.remote(TileWorker).options(**self._options).remote(self.model, **self._worker_args)

    def _wait_started(self, actors) -> None:
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            ray.get([a.ping.remote() for a in actors], timeout=self.start_timeout_s)
        except GetTimeoutError as exc:
            need = "1 GPU" if self.use_gpus else f"{self._options['num_cpus']} CPU"
            raise MimicMotionError(
                f"Ray actors did not start within {self.start_timeout_s:g}s: each needs {need}; the cluster has "
                f"{ray.available_resources()} free. Use fewer actors or a larger cluster") from exc

    def _replace(self, k: int, error: Exception):
        import ray

        if self.restarts >= self.max_restarts:
            raise MimicMotionError(f"Ray actor {k} died and the restart budget ({self.max_restarts}) is spent: "
                                   f"{error}") from error
        self.restarts += 1
        log.warning("Ray actor %d died (%s); starting a replacement (%d/%d)", k, type(error).__name__,
                    self.restarts, self.max_restarts)
        try:
            ray.kill(self.actors[k])
        except Exception:  # already gone
            pass
        self.actors[k] = self._start_actor()
        self._wait_started([self.actors[k]])
        if self._cond_ref is not None:
            ray.get(self.actors[k].set_conditioning.remote(self._cond_ref))

    def _call_all(self, submit, jobs: dict):
        """Run ``submit(actor, job)`` for each {actor index: job}, replacing dead actors and re-running
        their jobs. Returns {actor index: result}."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        futures = {k: submit(self.actors[k], job) for k, job in jobs.items()}
        results = {}
        while futures:
            k, future = next(iter(futures.items()))
            try:
                results[k] = ray.get(future)
                del futures[k]
            except (RayActorError, ActorUnavailableError) as error:
                self._replace(k, error)
                futures[k] = submit(self.actors[k], jobs[k])
        return results

    def set_conditioning(self, cond) -> None:
        """Send the render's conditioning to every actor (once per render)."""
        import ray

        self._cond = cond
        self._cond_ref = ray.put(_to_cpu(cond))
        self._call_all(lambda actor, _: actor.set_conditioning.remote(self._cond_ref),
                       {k: None for k in range(self.num_actors)})

    # -------------------------------------------------------------- the executor protocol
    def __call__(self, model_input: torch.Tensor, t, cond, tiles):
        import ray

        if cond is not self._cond:
            self.set_conditioning(cond)
        start = time.perf_counter()
        input_ref = ray.put(model_input.cpu())  # once per step, shared by every actor
        put_s = time.perf_counter() - start
        t_value = float(t)
        blocks = {k: [list(tiles[j]) for j in block]
                  for k, block in enumerate(assign_tiles(len(tiles), self.num_actors)) if len(block)}
        results = self._call_all(lambda actor, block: actor.denoise.remote(input_ref, t_value, block), blocks)
        outputs, compute = [], []
        for k in sorted(results):  # blocks are contiguous, so actor order is tile order
            outs, seconds = results[k]
            outputs.extend(o.to(model_input.device) for o in outs)
            compute.append(seconds)
        self.stats.append(StepStats(put_s=put_s, wall_s=time.perf_counter() - start, compute_s=compute))
        return outputs

    def decode(self, latents: torch.Tensor, decode_chunk_size: int = 8) -> torch.Tensor:
        """Latents (B, F, 4, h, w) -> frames (B, F, 3, H, W) in [0,1], chunks decoded on the actors
        round-robin; equals ``pipe.decode(latents, decode_chunk_size)``."""
        b, f = latents.shape[:2]
        flat = latents.cpu().flatten(0, 1)
        chunks = decode_chunks(flat.shape[0], decode_chunk_size)
        frames = [None] * len(chunks)
        # Rounds of one chunk per actor, so a dead actor only costs its chunk of the current round.
        for first in range(0, len(chunks), self.num_actors):
            round_jobs = {k: first + k for k in range(self.num_actors) if first + k < len(chunks)}
            results = self._call_all(
                lambda actor, c: actor.decode.remote(flat[chunks[c].start:chunks[c].stop][None], decode_chunk_size),
                round_jobs)
            for k, c in round_jobs.items():
                frames[c] = results[k][0]
        out = torch.cat(frames)
        return out.reshape(b, f, *out.shape[1:])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _to_cpu(cond):
    from mimicmotion.pipeline import Conditioning

    return Conditioning(**{k: v.cpu() for k, v in vars(cond).items()})


def ensure_ray(num_cpus: Optional[int] = None, address: Optional[str] = None) -> None:
    """Start (or connect to) Ray once per process, without the dashboard."""
    import ray

    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False)
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
