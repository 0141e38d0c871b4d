"""benchmarks/train_step_flops.py: the FLOP estimate of a train step, by hand, and a tiny run end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("train_step_flops", ROOT / "benchmarks" / "train_step_flops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# SmolLM2-135M's shape: d 576, 1536 MLP, 30 layers, 9 heads of 64, 3 key/value heads, vocab 49152
SMOL = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152)


def test_linear_shapes_of_smollm2_by_hand():
    shapes = _bench().linear_shapes(SMOL)
    assert shapes["k_proj"] == (576, 192, 30)  # 3 kv heads x 64
    assert shapes["down_proj"] == (1536, 576, 30) and shapes["lm_head"] == (576, 49152, 1)
    per_layer = sum(k * n for name, (k, n, c) in shapes.items() if name != "lm_head")
    assert per_layer == 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 == 3_538_944


def test_attention_flops_by_hand():
    bench = _bench()
    cfg = SimpleNamespace(hidden_size=4)
    # forward: 4 x d x S^2 per layer and sequence (QK^T and AV, 2 FLOPs per multiply-add)
    assert bench.attention_flops(cfg, [3], layers=1, backward=False) == 4 * 4 * 9
    assert bench.attention_flops(cfg, [3, 2], layers=2, backward=False) == 4 * 4 * (9 + 4) * 2
    assert bench.attention_flops(cfg, [3], layers=1, backward=True) == 3 * 4 * 4 * 9  # forward + 2x backward


def test_shape_bound_is_the_steps_linear_flops_over_their_summed_times():
    bench = _bench()
    shapes = {"a": (2, 3, 2), "lm_head": (2, 5, 1)}  # layer "a" twice, one head
    rates = {"a.forward": {"seconds": 1.0, "flops_per_s": 24.0}, "a.grad_input": {"seconds": 2.0, "flops_per_s": 12.0},
             "lm_head.forward": {"seconds": 4.0, "flops_per_s": 10.0}, "square_2048": {"seconds": 1.0, "flops_per_s": 99.0}}
    s = bench.peak_summary(rates, shapes, tokens=2)
    # FLOPs: a (2 x 2x2x3 = 24) for each of 2 timed products, 2 layers; head 2x2x2x5 = 40 once
    assert s["shape_bound_flops_per_s"] == pytest.approx((2 * 24 + 2 * 24 + 40) / (2 * 1.0 + 2 * 2.0 + 4.0))
    assert s["peak_flops_per_s"] == 99.0
    no_head = bench.peak_summary(rates, shapes, tokens=2, skip=("lm_head",))
    assert no_head["shape_bound_flops_per_s"] == pytest.approx(96 / 6.0)


@pytest.mark.slow
def test_tiny_run_writes_every_figure(tmp_path):
    out = tmp_path / "flops.json"
    assert _bench().main(["--tiny", "--steps", "1", "--warmup", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for stage in ("sft", "reward"):
        r = res[stage]
        assert r["flops_per_step"] > 0 and r["seconds_per_step"] > 0 and 0 < r["share_of_peak"]
        assert r["flops_per_s"] == pytest.approx(r["flops_per_step"] / r["seconds_per_step"])
    assert res["reward"]["frozen_layers"] == 0 or res["reward"]["trained_matmul_params"] < res["reward"]["matmul_params"]
    assert set(res["peaks"]) >= {"fp32"} and res["machine"]["cores"] >= 1
