"""benchmarks/gpu_check.py in its tiny CPU mode: every part runs and writes its JSON, so the script a lent
GPU runs first cannot rot between the sessions that have a device."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_mode_writes_every_part(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
                           "--out", str(out), "--budget-scale", "6"], capture_output=True, text=True, timeout=1200)
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], (out / "gpu_check.log").read_text()[-3000:])
    expected = {"env", "render_unbatched", "render_channels_last", "render_compiled", "lean_F145",
                "lean_F289", "fusion", "train", "pose"}
    assert expected <= set(summary)
    for name in expected:
        assert summary[name]["status"] == "ok", summary[name]
        assert json.loads((out / f"{name}.json").read_text())["status"] == "ok"
    release = summary["render_unbatched"]
    assert release["seconds_1_step"] > 0 and release["seconds_3_steps"] > 0  # tiny steps: their order is noise
    for key in ("seconds_per_step", "seconds_25_steps", "achieved_tflops", "ratio_to_floor", "peak_vram_gib"):
        assert key in release
    for path in ("channels_last", "compiled"):
        assert summary[f"render_{path}"]["max_abs_diff_vs_unbatched"] >= 0
    assert summary["lean_F289"]["frames"] > summary["lean_F145"]["frames"]
    assert summary["fusion"]["fuse_and_step_ms"] > 0 and summary["fusion"]["unet_call_ms"] > 0
    assert summary["train"]["samples_per_s"] > 0
    assert summary["pose"]["fps"] > 0 and summary["pose"]["people_found"] >= 1


def test_a_part_over_its_budget_is_stopped_and_recorded(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
                           "--out", str(out), "--only", "render_unbatched", "--budget-scale", "0.01"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    part = json.loads((out / "render_unbatched.json").read_text())
    assert part["status"].startswith("over its") and "budget" in part["status"]
