"""benchmarks/rl_time_to_quality.py runs end to end on tiny models: trains each trainer for its budget,
snapshots it, evaluates every snapshot on held-out prompts by gold reward and writes the curves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole pipelines, processes or servers: the full tier (make test)

ROOT = Path(__file__).resolve().parents[1]


def test_time_to_quality_tiny_runs_and_writes_curves(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ppo_vs_trl import tiny_models

    from components.core.config import load_config
    from components.datasets.synth import write_builtin

    tiny_models(tmp_path / "outputs", 0)
    write_builtin(load_config(overrides=["common.profile=test"]), tmp_path / "data", force=True)
    out = tmp_path / "ttq.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rl_time_to_quality.py"), "--outputs",
                        str(tmp_path / "outputs"), "-S", "common.profile=test", "-S", f"common.data_dir={tmp_path / 'data'}",
                        "--trainers", "ours-ppo-ptx,trl-grpo,trl-rloo-lora", "--budget", "4", "--every", "2", "--eval-prompts", "6",
                        "--threads", "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert r["held_out_prompts"] == 6 and set(r["curves"]) == {"ours-ppo-ptx", "trl-grpo", "trl-rloo-lora"}
    for name, pts in r["curves"].items():
        assert pts[0] == {**pts[0], "seconds": 0.0, "win_rate": 0.5, "n": 6}  # SFT against itself: all ties
        assert len(pts) >= 3, pts  # at 2 s, (4 s,) and the end
        assert all(b["seconds"] > a["seconds"] and b["update"] >= a["update"] for a, b in zip(pts, pts[1:]))
        assert all(0 <= q["lo"] <= q["win_rate"] <= q["hi"] <= 1 for q in pts)
        assert r["peak_rss_mb"][name] > 0
    assert r["lora"]["ours-ppo-ptx"]["r"] > 0 and r["lora"]["trl-grpo"] is None
    assert r["lora"]["trl-rloo-lora"] == r["lora"]["ours-ppo-ptx"]  # TRL trained the same adapter
    assert "target" in r and r["target"]["best_peer"] in {"trl-grpo", "trl-rloo-lora"}
