"""benchmarks/ppo_vs_trl.py runs end to end on tiny models (skipped when trl 1.12.0 cannot be installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole pipelines, processes or servers: the full tier (make test)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variant", [[], ["--lora-rank", "4", "--value-freeze-layers", "1"]], ids=["full", "lora"])
def test_ppo_vs_trl_tiny_runs_both_sides(tmp_path, variant):
    out, data = tmp_path / "ppo_vs_trl.json", tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Name a colour, number {i}.", "split": "train"}) + "\n"
                            for i in range(8)))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ppo_vs_trl.py"), "--tiny", "--updates", "2",
                        "--batch-size", "4", "--minibatch-size", "2", "--max-new-tokens", "8", "--threads", "1",
                        "--data", str(data), "--out", str(out), *variant], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0 and "cannot install the peer" in p.stderr:
        pytest.skip("trl 1.12.0 cannot be installed here (no registry?)")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    for side in ("ours", "trl"):
        assert r[side]["updates"] == 2 and r[side]["samples"] == 8 and r[side]["rollouts"] == 2
        assert r[side]["samples_per_s"] > 0 and r[side]["peak_rss_mb"] >= r[side]["rss_at_loop_start_mb"] > 0
    assert r["ours"]["prompt_ids_sha1"] == r["trl"]["prompt_ids_sha1"]
    assert r["ratio_ours_over_trl"]["samples_per_s"] > 0 and isinstance(r["targets"]["met"], bool)
    assert "samples/s" in p.stdout and "peak RSS MB" in p.stdout
