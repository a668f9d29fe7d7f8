"""A pose estimator on a pool of Ray actors: each actor loads its models once (DWPose's two ONNX files, or the
bundled Holistic models) and estimates batches of frames.

:class:`RayPoseEstimator` looks like the in-process estimator to the curation code (``estimate_batch``,
``name``, ``version``) and adds
``estimate_batches``, which keeps several batches in flight across the actors while the caller decodes
the next ones, and yields the results in order. Actors are GPU actors when the Ray cluster has GPUs
(sharing them when there are more actors than GPUs), CPU actors otherwise. A crashed actor is restarted
by Ray and its batch retried (``max_restarts``). The library (``mimicmotion``) never imports Ray.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from mimicmotion.errors import ConfigError, MimicMotionError, ModelFileError


class PoseWorker:
    """The actor body (a plain class, testable without Ray): one resident pose estimator."""

    def __init__(self, model_dir: Optional[str], providers: Optional[Sequence[str]] = None, pose_batch_size: int = 32,
                 estimator: str = "dwpose", num_threads: Optional[int] = None):
        from mimicmotion.pose.estimators import make_pose_estimator

        self.estimator = make_pose_estimator(estimator, model_dir, providers=providers,
                                             pose_batch_size=pose_batch_size, num_threads=num_threads,
                                             announce=False)

    def estimate(self, frames: np.ndarray) -> list:
        return self.estimator.estimate_batch(list(frames))

    def providers(self) -> list:
        return list(self.estimator.providers)

    def identity(self) -> tuple:
        return self.estimator.name, self.estimator.version

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Start (or connect to) Ray unless it is running in this process; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False)
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    return True


def actor_gpus(num_actors: int, cluster_gpus: float, use_gpus: Optional[bool]) -> float:
    """GPUs per actor: a share of the cluster's GPUs (at most one each) when GPUs are used, else 0."""
    if num_actors < 1:
        raise ConfigError(f"the number of Ray pose actors must be >= 1, got {num_actors}")
    if use_gpus is None:
        use_gpus = cluster_gpus > 0
    if not use_gpus:
        return 0.0
    if cluster_gpus <= 0:
        raise ConfigError("GPU pose actors were requested but the Ray cluster has no GPU")
    return min(1.0, cluster_gpus / num_actors)


class RayPoseEstimator:
    """``num_actors`` resident pose-estimator actors (``estimator``: dwpose, mediapipe or auto). Ray must be
    initialised (see :func:`ensure_ray`).

    ``max_in_flight``: batches submitted but not yet collected by :meth:`estimate_batches`
    (default: two per actor, so an actor never waits for the driver)."""

    def __init__(self, model_dir=None, num_actors: int = 2, *, use_gpus: Optional[bool] = None,
                 cpus_per_actor: float = 1, pose_batch_size: int = 32, max_in_flight: Optional[int] = None,
                 max_restarts: int = 2, start_timeout_s: float = 120, estimator: str = "dwpose"):
        import ray

        from mimicmotion.pose.estimators import choose_pose_estimator

        if not ray.is_initialized():
            raise MimicMotionError("Ray is not initialised: call ray.init() or tasks.ray_pose.ensure_ray() first")
        self.name = choose_pose_estimator(estimator, model_dir).name
        if self.name == "dwpose":
            from mimicmotion.pose.dwpose import DET_MODEL_FILE, POSE_MODEL_FILE, model_file, resolve_model_dir

            folder, chosen_by = resolve_model_dir(model_dir)
            for name in (DET_MODEL_FILE, POSE_MODEL_FILE):  # fail here, with the path, not inside an actor
                model_file(folder, name, chosen_by)
            folder_arg = str(folder.resolve())
            gpus = actor_gpus(num_actors, float(ray.cluster_resources().get("GPU", 0)), use_gpus)
        else:
            from mimicmotion.pose.holistic import verify_models

            verify_models()  # the bundled files, checked here rather than inside an actor
            folder, folder_arg = "the bundled MediaPipe Holistic models", None
            gpus = 0.0  # LiteRT runs on the CPU
        providers = None if gpus else ["CPUExecutionProvider"]
        threads = max(1, int(cpus_per_actor))
        self.num_actors = num_actors
        self.gpus_per_actor = gpus
        self.max_in_flight = max_in_flight or 2 * num_actors
        remote = ray.remote(PoseWorker).options(num_cpus=cpus_per_actor, num_gpus=gpus, max_restarts=max_restarts,
                                                max_task_retries=max_restarts, scheduling_strategy="SPREAD")
        self.actors = [remote.remote(folder_arg, providers, pose_batch_size, self.name, threads)
                       for _ in range(num_actors)]
        self._next = itertools.count()
        try:
            self.providers = ray.get([a.providers.remote() for a in self.actors], timeout=start_timeout_s)
            self.name, self.version = ray.get(self.actors[0].identity.remote(), timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError as exc:
            self.close()
            raise MimicMotionError(f"{num_actors} Ray pose actors did not start within {start_timeout_s:g}s "
                                   f"(each needs {cpus_per_actor} CPU and {gpus:g} GPU; free: "
                                   f"{ray.available_resources()}): use fewer actors") from exc
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise ModelFileError(f"the {self.name} pose actors could not load the models from {folder}: {exc}") from exc

    def _submit(self, frames):
        actor = self.actors[next(self._next) % self.num_actors]
        return actor.estimate.remote(np.ascontiguousarray(np.asarray(frames)))

    def estimate_batch(self, frames) -> list:
        import ray

        return ray.get(self._submit(frames))

    def estimate_batches(self, batches: Iterable) -> Iterator[list]:
        """Results of each batch, in order, with up to ``max_in_flight`` batches being worked on."""
        import ray

        pending: deque = deque()
        for frames in batches:
            pending.append(self._submit(frames))
            if len(pending) >= self.max_in_flight:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.estimate_batch([frame])[0]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
