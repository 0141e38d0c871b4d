"""The rank stage: the SFT model's own samples, ranked by the simulated labeler, through the data gate."""

from __future__ import annotations

import json
import shutil

import pytest

from components.core.config import load_config
from components.core.data import FILES, read_jsonl
from components.core.errors import ValidationFailed
from components.datasets import synth
from components.stages import rank


def setup_project(tmp_path, tiny_model_dir, **synth_kw):
    overrides = ["common.profile=test", f"common.data_dir={tmp_path / 'data'}",
                 f"common.outputs_dir={tmp_path / 'outputs'}", f"common.metrics_dir={tmp_path / 'metrics'}"]
    cfg = load_config(overrides=overrides)
    synth.write_builtin(cfg, tmp_path / "data", force=True)
    shutil.copytree(tiny_model_dir, tmp_path / "outputs" / "sft")
    return cfg


def test_rank_samples_k_answers_ranks_them_and_is_deterministic(tmp_path, tiny_model_dir):
    cfg = setup_project(tmp_path, tiny_model_dir)
    m1 = rank.run(cfg)
    out = tmp_path / "outputs" / "rank" / FILES["comparisons"]
    first = out.read_bytes()
    recs = read_jsonl(out)
    assert m1["items"] == len(recs) > 0 and m1["answers"] == sum(len(r["responses"]) for r in recs)
    by_id = {r["id"]: r for r in read_jsonl(tmp_path / "data" / FILES["comparisons"])}
    for r in recs:
        src = by_id[r["id"].rsplit("-sft-", 1)[0]]
        assert r["prompt"] == src["prompt"] and r["user_id"] == src["user_id"]  # the split follows the author
        assert 2 <= len(r["responses"]) <= cfg.rank.k_max and len(set(r["responses"])) == len(r["responses"])
        assert r["ranks"] == synth.rank_responses(  # the simulated labeler's ranking, seeded per prompt
            r["prompt"], r["responses"], rank.Random(f"{cfg.common.seed}:{rank.LABELER}:{src['id']}"),
            cfg.data.label_noise, cfg.data.tie_margin)
    report = json.loads((tmp_path / "outputs" / "rank" / "report.json").read_text())
    assert report["success"] and list(report["files"]) == [FILES["comparisons"]]  # the data gate ran on it
    for rate in ("sft_signoff_rate", "sft_padding_rate", "sft_missing_word_rate", "sft_unsafe_rate", "sft_gold_mean"):
        assert 0 <= m1[rate] <= 1
    rank.run(cfg)
    assert out.read_bytes() == first  # same seed, same samples, same rankings


def test_rank_refuses_rankings_that_fail_the_gate(tmp_path, tiny_model_dir, monkeypatch):
    cfg = setup_project(tmp_path, tiny_model_dir)
    real = rank.rankings

    def with_a_bad_one(*a, **kw):
        items = real(*a, **kw)
        items[0] = {**items[0], "ranks": [0] * len(items[0]["responses"])}  # all tied: refused by the gate
        return items

    monkeypatch.setattr(rank, "rankings", with_a_bad_one)
    with pytest.raises(ValidationFailed, match="ranks_not_all_equal"):
        rank.run(cfg)
    assert not (tmp_path / "outputs" / "rank" / FILES["comparisons"]).exists()  # nothing half-good left for reward


def test_rank_without_gold_rewards_makes_no_rankings_and_says_why(tmp_path, tiny_model_dir, capsys):
    cfg = setup_project(tmp_path, tiny_model_dir)
    path = tmp_path / "data" / FILES["comparisons"]
    path.write_text(path.read_text().replace("What is", "Tell me, what is").replace("Write", "Please write"))
    recs = read_jsonl(path)
    if any(synth.parse_task(r["prompt"]) is not None for r in recs):  # some other family left: drop those records
        from components.core.data import write_jsonl

        write_jsonl(path, [r for r in recs if synth.parse_task(r["prompt"]) is None])
    assert rank.run(cfg)["items"] == 0
    assert "no gold reward" in capsys.readouterr().out
    assert read_jsonl(tmp_path / "outputs" / "rank" / FILES["comparisons"]) == []
