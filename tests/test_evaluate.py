"""Evaluation estimators against hand-computed values, the KV-cache choice scorer against the plain
one, and the promotion gate's verdicts."""

from __future__ import annotations

import math

import pytest
import torch

from components.core.config import PromoteConfig
from components.core.errors import ValidationFailed
from components.stages.evaluate import alignment_tax_table, choice_logprobs, choice_logprobs_naive
from components.maths.metrics import mc_scores
from components.stages.promote import gate


def test_mc_scores_hand_computed():
    mc1 = [("true", 1), ("false a", 0), ("false b", 0)]
    mc2 = [("true", 1), ("also true", 1), ("false a", 0)]
    lp = {"true": math.log(0.2), "also true": math.log(0.3), "false a": math.log(0.5), "false b": math.log(0.1)}
    m1, m2 = mc_scores(mc1, mc2, lp)
    assert m1 == 0.0                      # "false a" (0.5) beats "true" (0.2)
    assert m2 == pytest.approx(0.5)       # (0.2 + 0.3) / (0.2 + 0.3 + 0.5)
    lp["true"] = math.log(0.6)
    m1, m2 = mc_scores(mc1, mc2, lp)
    assert m1 == 1.0 and m2 == pytest.approx(0.9 / 1.4)


def test_kv_cache_choice_scoring_equals_one_pass_per_choice(tiny_model_dir):
    from components.core.models import load_model_dir

    model, tok = load_model_dir(tiny_model_dir)
    prefix = tok("Question: what is two plus two? Answer:", add_special_tokens=False)["input_ids"]
    choices = [tok(t, add_special_tokens=False)["input_ids"] for t in (" four", " five and a half", " 4", " I have no idea at all")]
    fast = choice_logprobs(model, prefix, choices, tok.pad_token_id)
    slow = choice_logprobs_naive(model, prefix, choices, tok.pad_token_id)
    assert fast.shape == (4,)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-5)
    # Each is a sum of log-probabilities of its own tokens: longer choices are not free.
    assert (fast < 0).all()


METRICS = {"win_rate_vs_ref": 0.5, "win_rate_vs_ref_lo": 0.5, "win_rate_vs_ref_hi": 0.5, "expected_max_toxicity": 0.10,
           "truthfulqa_mc1": 0.30, "squad_f1": 0.40, "hellaswag_acc": 0.50, "perplexity": 10.0}
BETTER = {"win_rate_vs_ref": 0.65, "win_rate_vs_ref_lo": 0.58, "win_rate_vs_ref_hi": 0.72}


def test_gate_passes_when_every_threshold_holds():
    cand = {**METRICS, **BETTER, "expected_max_toxicity": 0.14, "truthfulqa_mc1": 0.26,
            "squad_f1": 0.36, "hellaswag_acc": 0.46, "perplexity": 12.4}
    checks = gate(cand, METRICS, PromoteConfig())
    assert [n for n, ok, _ in checks if not ok] == []
    assert len(checks) == 6


@pytest.mark.parametrize("key,value,failing", [
    ("win_rate_vs_ref_lo", 0.45, "win_rate"),
    ("expected_max_toxicity", 0.16, "toxicity"),
    ("truthfulqa_mc1", 0.24, "truthfulqa"),
    ("squad_f1", 0.34, "squad_f1"),
    ("hellaswag_acc", 0.44, "hellaswag_acc"),
    ("perplexity", 12.6, "perplexity"),
    ("squad_f1", float("nan"), "squad_f1"),
])
def test_gate_fails_on_each_threshold_and_says_why(key, value, failing):
    cand = {**METRICS, **BETTER, key: value}
    failed = [(n, why) for n, ok, why in gate(cand, METRICS, PromoteConfig()) if not ok]
    assert [n for n, _ in failed] == [failing]
    assert failed[0][1]  # an explanation for the report and the version tag


def test_gate_takes_the_win_rate_from_gold_else_the_judge_and_says_which():
    judged = {"judge_win_rate_vs_ref": 0.66, "judge_win_rate_vs_ref_lo": 0.6, "judge_win_rate_vs_ref_hi": 0.7}
    no_gold = {k: v for k, v in METRICS.items() if not k.startswith("win_rate")}
    ref_judged = {**no_gold, "judge_win_rate_vs_ref": 0.5, "judge_win_rate_vs_ref_lo": 0.5, "judge_win_rate_vs_ref_hi": 0.5}
    (ok, why), = [(ok, why) for n, ok, why in gate({**no_gold, **judged}, ref_judged, PromoteConfig()) if n == "win_rate"]
    assert ok and "0.660, 95% interval [0.600, 0.700]" in why and "judged by the judge reward model" in why
    # gold first when both are there (the judge would pass, gold does not)
    both = {**METRICS, **judged, "win_rate_vs_ref_lo": 0.45}
    (ok, why), = [(ok, why) for n, ok, why in gate(both, {**METRICS, **ref_judged}, PromoteConfig()) if n == "win_rate"]
    assert not ok and "judged by the gold reward" in why
    # neither: refused, saying what to do, never skipped
    (ok, why), = [(ok, why) for n, ok, why in gate(no_gold, no_gold, PromoteConfig()) if n == "win_rate"]
    assert not ok and "no preference measure" in why and "evaluate.judge" in why


def test_judge_scores_each_text_once_so_identical_answers_tie():
    """A judge whose score moves with a text's place in the batch (as bf16 scores do): the reference against
    itself is still all ties, 0.5, and no (prompt, answer) is scored twice."""
    from components.stages.evaluate import judge_preference

    class Judge:
        calls: list[int] = []

        def score(self, prompts, answers):
            self.calls.append(len(answers))
            return torch.tensor([float(len(a)) + 1e-3 * i for i, a in enumerate(answers)])

    answers = ["aaa", "a", "aa", "aaaa"]
    m = judge_preference(["p1", "p2", "p3", "p4"], answers, answers, [["aa", "a"]] * 4, [["aa", "a"]] * 4, Judge(), seed=0)
    assert m["judge_win_rate_vs_ref"] == 0.5 and m["judge_win_rate_vs_ref_lo"] == m["judge_win_rate_vs_ref_hi"] == 0.5
    assert m["judge_win_rate_sampled_vs_ref"] == 0.5
    assert Judge.calls == [4, 6]  # 4 distinct greedy pairs, not 8; then the 8 sampled pairs less (p2, a), (p3, aa)


def test_judge_win_rate_by_hand():
    from components.stages.evaluate import judge_preference

    class Judge:  # a judge that scores an answer by its length
        def score(self, prompts, answers):
            return torch.tensor([float(len(a)) for a in answers])

    m = judge_preference(["p1", "p2", "p3", "p4"], ["aaa", "a", "aa", "aaaa"], ["a", "aa", "aa", "a"],
                         [["aa", "a"]] * 4, [["a"]] * 4, Judge(), seed=0)
    # greedy: win, loss, tie, win -> (1 + 0 + 0.5 + 1) / 4
    assert m["judge_win_rate_vs_ref"] == pytest.approx(0.625) and m["judge_preference_n"] == 4
    assert m["judge_win_rate_vs_ref_lo"] <= 0.625 <= m["judge_win_rate_vs_ref_hi"]
    assert m["judge_score"] == pytest.approx(2.5)
    # sampled: each prompt (win "aa" > "a", tie "a" = "a") -> 0.75
    assert m["judge_win_rate_sampled_vs_ref"] == pytest.approx(0.75)


def test_the_policys_own_reward_model_is_refused_as_judge(tmp_path):
    from components.core.config import load_config
    from components.core.errors import ConfigError
    from components.stages.evaluate import judge_scorer

    cfg = load_config(overrides=[f"common.outputs_dir={tmp_path}"])
    assert judge_scorer(cfg) is None
    for ref in (str(tmp_path / "reward"), "models:/reward-model@champion", "models:/reward-model/3"):
        with pytest.raises(ConfigError, match="policy's own reward model"):
            judge_scorer(load_config(overrides=[f"common.outputs_dir={tmp_path}", f"evaluate.judge={ref}"]))


def test_gate_says_when_the_toxicity_difference_is_within_its_standard_error():
    # sd 0.3 over 10 prompts and 0.4 over 17: se sqrt(0.3²/9 + 0.4²/16) = sqrt(0.02) = 0.141
    cand = {**METRICS, **BETTER, "expected_max_toxicity": 0.20, "expected_max_toxicity_std": 0.3, "toxicity_n": 10}
    ref = {**METRICS, "expected_max_toxicity_std": 0.4, "toxicity_n": 17}
    (ok, why), = [(ok, why) for n, ok, why in gate(cand, ref, PromoteConfig()) if n == "toxicity"]
    assert not ok  # the check itself still compares the point estimates (0.20 > 0.10 + 0.05)
    assert why.endswith("difference +0.100 ± 0.141 (standard error, 10 and 17 prompts) (within its error)")
    far = {**cand, "expected_max_toxicity": 0.30}
    (why,) = [why for n, _, why in gate(far, ref, PromoteConfig()) if n == "toxicity"]
    assert why.endswith("difference +0.200 ± 0.141 (standard error, 10 and 17 prompts)")
    (why,) = [why for n, _, why in gate({**METRICS, **BETTER}, METRICS, PromoteConfig()) if n == "toxicity"]
    assert "standard error" not in why  # not measured: nothing claimed


def test_gate_fails_a_metric_missing_on_either_side():
    cand = {k: v for k, v in METRICS.items() if k != "perplexity"}
    failed = [n for n, ok, _ in gate({**cand, **BETTER}, METRICS, PromoteConfig()) if not ok]
    assert failed == ["perplexity"]


@pytest.mark.parametrize("lo, promoted", [(0.5, False), (0.5000001, True), (0.49, False)])
def test_gate_compares_the_intervals_lower_bound_at_its_boundary(lo, promoted):
    """A candidate identical to SFT (every answer a tie: 0.5, interval [0.5, 0.5]) is not promoted;
    nor one whose point estimate is high but whose interval reaches 0.5."""
    assert [ok for n, ok, _ in gate(METRICS, METRICS, PromoteConfig()) if n == "win_rate"] == [False]
    cand = {**METRICS, "win_rate_vs_ref": 0.7, "win_rate_vs_ref_lo": lo, "win_rate_vs_ref_hi": 0.9}
    (ok, why), = [(ok, why) for n, ok, why in gate(cand, METRICS, PromoteConfig()) if n == "win_rate"]
    assert ok is promoted and f"95% interval [{lo:.3f}, 0.900]" in why


def test_alignment_tax_table_shows_change_vs_reference():
    table = alignment_tax_table({"sft": {"squad_f1": 0.5, "perplexity": 10.0},
                                 "ppo": {"squad_f1": 0.4, "perplexity": 11.0}}, "sft")
    assert "| metric | sft | ppo |" in table
    assert "| SQuAD F1 ↑ | 0.500 | 0.400 (-0.100) |" in table
    assert "| perplexity ↓ | 10.000 | 11.000 (+1.000) |" in table
    assert "TruthfulQA" not in table  # rows only for measured metrics


def test_per_text_nll_agrees_with_the_pooled_nll_and_does_not_depend_on_the_batch(tiny_model_dir):
    from components.core.models import load_model_dir
    from components.core.scoring import heldout_nll, per_text_nll

    model, tok = load_model_dir(tiny_model_dir)
    texts = [f"Text number {i} is long enough to be cut at the same length as every other one here." for i in range(5)]
    one = per_text_nll(model, tok, texts, 12, batch=1)
    assert one == pytest.approx(per_text_nll(model, tok, texts, 12, batch=3), abs=1e-5)
    assert sum(one) / len(one) == pytest.approx(heldout_nll(model, tok, texts, 12), abs=1e-5)  # equal lengths: same mean
    assert len(set(round(x, 6) for x in one)) > 1  # one figure per text


def test_real_text_tax_pairs_texts_by_hand():
    from components.stages.evaluate import alignment_tax_table, real_text_tax

    ref = real_text_tax({"hh": [0.0, 0.0, 1.0]}, None)
    assert ref == {"text_nll_hh": 1 / 3, "text_nll_hh_n": 3}
    m = real_text_tax({"hh": [1.0, 2.0, 3.0]}, {"hh": [0.0, 0.0, 1.0]})
    assert m["text_nll_hh"] == 2.0 and m["text_nll_hh_vs_ref"] == pytest.approx(5 / 3)
    assert m["text_nll_hh_vs_ref_se"] == pytest.approx(1 / 3)
    table = alignment_tax_table({"sft": ref, "ppo": m}, "sft")
    assert "| NLL / token, real text: hh ↓ | 0.333 | 2.000 (+1.667 ± 0.333) |" in table


def test_promote_moves_champion_only_through_the_gate(tmp_path, tiny_model_dir, isolated_mlflow):
    """v1 fails (no champion), v2 passes (champion v2), v3 fails (champion stays v2, reason on v3)."""
    import json

    from mlflow import MlflowClient

    from components.stages import promote
    from components.core.config import load_config
    from components.core.registry import register_model
    from components.core.tracking import stage_run, write_metrics

    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={tmp_path / 'out'}",
                                 f"common.metrics_dir={tmp_path / 'metrics'}", f"common.data_dir={tmp_path / 'data'}"])
    client = MlflowClient(isolated_mlflow)
    for version, win in ((1, 0.3), (2, 0.7), (3, 0.2)):
        with stage_run(cfg, "ppo"):
            v = register_model(tiny_model_dir, cfg, "ppo", name="policy")
        assert int(v.version) == version
        write_metrics(cfg.metrics_file("ppo"), {"model_version": version})
        write_metrics(cfg.out_dir("evaluate") / "sft.json", METRICS)
        write_metrics(cfg.out_dir("evaluate") / "ppo.json",
                      {**METRICS, "win_rate_vs_ref": win, "win_rate_vs_ref_lo": win - 0.1, "win_rate_vs_ref_hi": win + 0.1})
        with stage_run(cfg, "promote"):
            result = promote.run(cfg)
        assert result["promoted"] == (win - 0.1 > 0.5)
        assert str(client.get_model_version_by_alias("policy", "candidate").version) == str(version)
    assert str(client.get_model_version_by_alias("policy", "champion").version) == "2"
    assert client.get_model_version("policy", "2").tags["promotion"] == "champion"
    assert client.get_model_version("policy", "3").tags["promotion"].startswith("rejected: win rate vs SFT 0.200")
    report = (cfg.out_dir("promote") / "report.md").read_text()
    assert "policy v3 not promoted**; `champion` stays v2" in report and "| win_rate | FAIL |" in report
    assert json.loads(json.dumps(result))["champion"] == "policy/2"

    # v4 has no gold win rate (imported prompts): blind A/B judgements of policy v4 against sft v1 decide
    from components.apps import ab
    from components.core.data import write_jsonl

    with stage_run(cfg, "ppo"):
        register_model(tiny_model_dir, cfg, "ppo", name="policy")
    write_metrics(cfg.metrics_file("ppo"), {"model_version": 4})
    write_metrics(cfg.metrics_file("sft"), {"model_version": 1})
    no_gold = {k: v for k, v in METRICS.items() if not k.startswith("win_rate")}
    write_metrics(cfg.out_dir("evaluate") / "sft.json", no_gold)
    write_metrics(cfg.out_dir("evaluate") / "ppo.json", no_gold)
    with stage_run(cfg, "promote"):
        assert not promote.run(cfg)["promoted"]  # no preference measure at all
    assert "rlhf label --compare models:/policy/4 models:/sft/1" in (cfg.out_dir("promote") / "report.md").read_text()
    versions = ["models:/sft/1", "models:/policy/4"]  # the queue may hold the pair in either order
    queue = {f"q{i}": {"id": f"q{i}", "prompt": f"Question {i}?", "answers": [f"SFT {i}", f"PPO {i}"],
                       "model_versions": versions} for i in range(24)}
    out = cfg.data_dir / "judgements.jsonl"
    for i, item in enumerate(queue.values()):
        shown = ab.shown_answers(item, "alice", 0)
        choice = "tie" if i % 6 == 0 else ("first" if shown[0] == item["answers"][1] else "second")  # PPO's wins
        ab.judge(queue, out, {"queue_item": item["id"], "labeler": "alice", "shown": shown, "choice": choice,
                              "pair": ab.pair_token(versions)})
    with stage_run(cfg, "promote"):
        result = promote.run(cfg)
    report = (cfg.out_dir("promote") / "report.md").read_text()
    assert result["promoted"] and "judged by blind A/B judgements (24 prompts, 24 judgements by 1 labelers" in report
    assert "win rate vs SFT 0.917" in report  # (20 wins + 4 ties / 2) / 24
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1] + [lines[-1].replace('"winner": "b"', '"winner": "B"')]) + "\n")
    with pytest.raises(ValidationFailed, match=r"judgements.jsonl:24 \[q23/alice\] winner: allowed_value"):
        promote.run(cfg)  # a bad judgement stops the gate, naming file, line, record and field


def test_rlhf_evaluate_a_registered_model(tmp_path, tiny_model_dir, isolated_mlflow, capsys):
    """`rlhf evaluate --model models:/policy@champion`: every metric family, one MLflow run for the model."""
    import json

    from mlflow import MlflowClient

    from components.apps import cli
    from components.datasets import synth
    from components.core.config import load_config
    from components.core.registry import register_model
    from components.core.tracking import stage_run

    synth.synthesize(tmp_path / "data", seed=0, n_demonstrations=8, n_comparisons=8, n_prompts=40, n_pretrain=40,
                     k_min=4, k_max=4, label_noise=0.05, tie_margin=0.02, n_users=8)
    common = ["-S", f"common.data_dir={tmp_path / 'data'}", "-S", f"common.outputs_dir={tmp_path / 'out'}",
              "-S", f"common.metrics_dir={tmp_path / 'metrics'}"]
    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={tmp_path / 'out'}"])
    with stage_run(cfg, "ppo"):
        register_model(tiny_model_dir, cfg, "ppo", name="policy", aliases=("champion",))
    capsys.readouterr()
    (tmp_path / "real.jsonl").write_text("".join(json.dumps({"text": f"A real sentence, number {i}."}) + "\n"
                                                 for i in range(5)))
    common += ["-S", f"evaluate.tax_texts=[{tmp_path / 'real.jsonl'}]"]
    assert cli.main(["evaluate", "--model", "models:/policy@champion", "--reference", str(tiny_model_dir),
                     "--profile", "test", "--out", str(tmp_path / "m.json"), *common]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    for key in ("truthfulqa_mc1", "truthfulqa_mc2", "hellaswag_acc", "squad_f1", "expected_max_toxicity",
                "toxicity_probability_respectful", "perplexity", "win_rate_vs_ref", "gold_reward"):
        assert key in m and m[key] == m[key], key  # present and not NaN
    assert 0 <= m["truthfulqa_mc2"] <= 1 and m["truthfulqa_n"] == 6 and m["toxicity_n"] == 3
    assert m["win_rate_vs_ref"] == 0.5  # the same weights as the reference: every prompt a tie
    assert m["text_nll_real_n"] == 5 and m["text_nll_real"] > 0 and m["text_nll_real_vs_ref"] == 0.0  # ... no tax
    client = MlflowClient(isolated_mlflow)
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id],
                              "tags.evaluated_model = 'policy@champion'")
    assert len(runs) == 1 and runs[0].data.metrics["eval/truthfulqa_mc2"] == m["truthfulqa_mc2"]
    assert cli.main(["evaluate", "--model", "models:/policy@nobody", "--profile", "test", *common]) == 3  # bad input: exit 3, as a stage
    assert "models:/policy@nobody: not in the registry" in capsys.readouterr().err


@pytest.mark.slow
def test_imported_prompts_get_a_judge_win_rate_and_no_gold(tiny_model_dir, tmp_path):
    """Prompts with no gold reward (an imported data set): the judge RM gives the preference, labelled judge_*."""
    import json

    from components.core.config import load_config
    from components.core.models import save_model_dir
    from components.stages import reward
    from components.stages.evaluate import Suite

    judge_dir = tmp_path / "judge"
    rm, tok = reward.load_reward_backbone(tiny_model_dir)
    save_model_dir(rm, tok, judge_dir)
    data = tmp_path / "data"
    data.mkdir()
    (data / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": q, "split": "eval"}) + "\n" for i, q in
                                                enumerate(["How do I keep basil alive indoors?", "What is a haiku?",
                                                           "Explain tides to a child."])))
    (data / "pretrain.jsonl").write_text(json.dumps({"id": "t0", "text": "Some text.", "split": "eval"}) + "\n")
    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={tmp_path / 'outputs'}",
                                 f"common.data_dir={data}", f"evaluate.judge={judge_dir}"])
    suite = Suite(cfg)
    assert not suite.gold and len(suite.prompts) == 3
    m = suite.run(tiny_model_dir, tiny_model_dir)
    assert m["judge_preference_n"] == 3 and m["judge_win_rate_vs_ref"] == 0.5  # the reference against itself: ties
    assert "win_rate_vs_ref" not in m and "gold_reward" not in m
