"""The benchmark scripts must keep working; here they run on CPU with tiny models and sizes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import render_gpu  # noqa: E402


def test_render_benchmark_runs_all_paths_on_tiny_model(tmp_path):
    rows = render_gpu.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--frames", "9", "--steps", "1",
                            "--tile-size", "4", "--tile-overlap", "2", "--height", "64", "--width", "64",
                            "--paths", "unbatched", "release", "tiles", "channels_last", "lean",
                            "--json", str(tmp_path / "r.json")])
    # (the compiled path runs inductor, minutes of C++ compilation on a CPU: its wiring is tested in
    # tests/test_pipeline.py)
    assert [r["path"] for r in rows] == ["unbatched", "release", "tiles", "channels_last", "lean"]
    assert rows[0]["max_abs_diff"] is None
    assert all(r["max_abs_diff"] < 1e-4 for r in rows[1:])  # every path within float noise of the first
    for r in rows:
        assert r["tiles"] == 4 and r["frames"] == 9 and r["seconds"] > 0 and r["peak_vram_gib"] is None
        assert abs(r["s_per_frame"] - r["seconds"] / 8) < 1e-3  # 8 output frames: the reference is dropped
    assert (tmp_path / "r.json").is_file()


def _tiny_pairs(vae, count, frames=9, size=8, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [dict(latents=rng.normal(size=(frames, vae.config.latent_channels, size, size)).astype(np.float32),
                 frames=rng.integers(0, 256, (frames, 4 * size, 4 * size, 3), dtype=np.uint8))
            for _ in range(count)]


def test_decoder_probe_adapts_a_variant_and_measures_margins_on_the_flow_s_split(tmp_path):
    import json

    import numpy as np

    import decoder_probe as probe
    from mimicmotion import demo_model as dm

    vae = dm.demo_components(downscale=4)["vae"]
    pairs = _tiny_pairs(vae, 17)
    train, held = dm.held_out_split(pairs)  # the flow's split, which the probe scores on
    assert len(train) == 15 and held[0] is pairs[0] and held[1] is pairs[16]
    result = probe.adapt_variant(vae, pairs, {"ssim_weight": 4.0, "crop": 4}, steps=2)
    assert result["ssim_weight"] == 4.0 and result["crop"] == 4 and result["held_out"] == 2 and result["step"] == 2
    assert result["before"] != result["after"]

    # copying the reference scores exactly its SSIM against the scored frames (2..)
    same = [dict(p, frames=np.repeat(p["frames"][:1], len(p["frames"]), axis=0)) for p in pairs[:2]]
    assert probe.copy_reference_scores(same)["ssim"] == 1.0
    found = probe.margins(vae, pairs)
    assert found["all"]["clips"] == 17 and found["held_out"]["clips"] == 2
    assert found["all"]["ssim_margin"] == found["all"]["model"]["ssim"] - found["all"]["copy_reference"]["ssim"]

    work = tmp_path / "work"
    (work / "decoder-pairs").mkdir(parents=True)
    for i, p in enumerate(pairs[:3]):
        np.savez(work / "decoder-pairs" / f"clip{i}.npz", **p)
    vae.save_pretrained(work / "vae")
    assert probe.main(["margin", "--work", str(work), "--vae", str(work / "vae"), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["all"]["clips"] == 3
    assert probe.main(["adapt", "--work", str(work), "--variant", "[1]", "--steps", "1"]) == 2
    assert probe.main(["adapt", "--work", str(work), "--variant", '{"nonsense": 1}', "--steps", "1"]) == 2


def test_draw_pose_benchmark_times_each_size():
    import draw_pose_cpu

    results = draw_pose_cpu.main(["--sizes", "64x48,96x64", "--frames", "3"])
    assert set(results) == {"64x48", "96x64"} and all(ms > 0 for ms in results.values())
