"""The GPU benchmark script must keep working; here it runs on CPU with the tiny model."""
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
