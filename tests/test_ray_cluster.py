"""A real two-node Ray cluster on this machine (issue 37, item 4): the render's actors spread over both
nodes, the second node is lost mid-render, the render finishes on the head node and its frames equal the
single-process render. The cluster is stopped at the end, even on failure."""
import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from tasks.ray_render import ModelSpec, RayTileExecutor  # noqa: E402

H = W = 64


@pytest.fixture()
def two_nodes():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' count: CPU sums depend on it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()
        torch.set_num_threads(threads)


def render(pipe, tile_executor=None, callback=None):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    poses = torch.from_numpy(rng.uniform(-1, 1, (11, 3, H, W)).astype(np.float32))
    return pipe(image, poses, height=H, width=W, tile_size=4, tile_overlap=2, num_inference_steps=3,
                generator=torch.Generator().manual_seed(42), output_type="latent", tile_executor=tile_executor,
                callback_on_step_end=callback).frames


def test_render_survives_losing_a_node(two_nodes, tmp_path):
    from mimicmotion.loading import load_pipeline
    from mimicmotion.tiny import save_tiny_model

    cluster, worker = two_nodes
    base, ckpt = save_tiny_model(tmp_path / "model")
    model = ModelSpec(str(base), str(ckpt))
    pipe = load_pipeline(model.base_model, model.checkpoint, dtype=torch.float32, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    local = render(pipe)
    with RayTileExecutor(model, num_actors=2, cpus_per_actor=1, torch_threads=1, start_timeout_s=120) as ex:
        nodes = ray.get([a.node_id.remote() for a in ex.actors])
        assert len(set(nodes)) == 2 and worker.node_id in nodes  # one actor on each node
        lost = []

        def lose_the_second_node(_pipe, step, _t, _tensors):
            if step == 0:
                cluster.remove_node(worker)
                lost.append(step)

        distributed = render(pipe, tile_executor=ex, callback=lose_the_second_node)
        assert lost and ex.restarts == 1
        assert set(ray.get([a.node_id.remote() for a in ex.actors])) == {cluster.head_node.node_id}
    diff = (local - distributed).abs().max().item()
    print(f"node lost mid-render: max abs diff vs local = {diff:.3g}")
    assert diff <= 1e-5


def test_pose_actors_spread_over_both_nodes(two_nodes):
    """The curate flow's pose actors (the bundled estimator) on the two nodes give the in-process poses."""
    from mimicmotion.pose.holistic import HolisticEstimator
    from mimicmotion.synthetic.clip import render_clip_detailed, sample_clip
    from tasks.ray_pose import RayPoseEstimator

    cluster, worker = two_nodes
    appearance, motion = sample_clip(0)
    frames = list(render_clip_detailed(appearance, motion, 0, width=288, height=512, num_frames=4, fps=4).frames)
    local = HolisticEstimator(num_threads=1).estimate_batch(frames)
    pool = RayPoseEstimator(None, num_actors=2, estimator="mediapipe", cpus_per_actor=1)
    try:
        nodes = ray.get([a.node_id.remote() for a in pool.actors])
        assert len(set(nodes)) == 2 and worker.node_id in nodes
        remote = [p for batch in pool.estimate_batches([frames[:2], frames[2:]]) for p in batch]
    finally:
        pool.close()
    for a, b in zip(local, remote):
        np.testing.assert_array_equal(a, b)
