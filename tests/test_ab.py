"""Blind A/B judgements (`rlhf label --compare`): the page in a real browser, refused judgements that write
nothing, the win rate and agreement by hand, the judgements' suite, the simulated labeler, and the gate's
use of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.apps import ab, label
from components.core.config import PromoteConfig, load_config
from components.core.data import read_jsonl, write_jsonl
from components.core.errors import ValidationFailed
from components.datasets import judgements as jd
from components.datasets import rules
from components.stages.promote import ab_metrics, gate
from test_evaluate import METRICS
from test_label import CHROMIUM, CHROMIUM_FLAGS, post, running

V = ["models:/policy/3", "models:/policy-sft/2"]
PAIRS = [
    {"id": "q1-aaaa", "prompt": "What is 17 + 25?", "prompt_type": "closed",
     "answers": ["17 + 25 = 42.", "<b>43</b> & more"]},
    {"id": "q2-bbbb", "prompt": "Name the capital city of Peru.", "answers": ["Lima.", "Cusco."]},
    {"id": "q3-cccc", "prompt": "Say hello.", "answers": ["Hello!", "Hi there."]},
]


def write_pairs(tmp_path: Path) -> Path:
    path = tmp_path / "ab_queue.jsonl"
    write_jsonl(path, [it | {"models": V, "model_versions": V, "sampling": {"temperature": 1.0}} for it in PAIRS])
    return path


def judgement(item: dict, labeler: str, choice: str, seed: int = 0) -> dict:
    return {"queue_item": item["id"], "labeler": labeler, "shown": ab.shown_answers(item | {"model_versions": V},
                                                                                    labeler, seed),
            "choice": choice, "pair": ab.pair_token(V)}


def rec(item: str, labeler: str, winner: str, versions=V) -> dict:
    return {"queue_item": item, "labeler": labeler, "winner": winner, "model_versions": list(versions)}


# ------------------------------------------------------------------------------ the maths, by hand
def test_win_rate_and_agreement_by_hand():
    recs = [rec("q1", "alice", "a"), rec("q1", "bob", "tie"),  # q1: (1 + 0.5) / 2 = 0.75
            rec("q2", "alice", "b"), rec("q2", "bob", "b"),  # q2: 0
            rec("q3", "alice", "b", versions=V[::-1]),  # q3: judged with B shown as the queue's A -> A wins: 1
            rec("q4", "alice", "a", versions=["models:/x/1", V[1]])]  # another pair: left out
    assert jd.item_scores(recs, *V) == {"q1": 0.75, "q2": 0.0, "q3": 1.0}
    s = jd.summary(recs, *V)
    assert s["rate"] == pytest.approx(1.75 / 3) and s["n"] == 3 and s["judgements"] == 5 and s["ties"] == 1
    # sd of (0.75, 0, 1) with ddof 1 over sqrt(3)
    assert s["se"] == pytest.approx((((0.75 - 1.75 / 3) ** 2 + (1.75 / 3) ** 2 + (1 - 1.75 / 3) ** 2) / 2 / 3) ** 0.5)
    assert s["lo"] <= s["rate"] <= s["hi"] and s["labelers"] == 2
    # agreement: q1 alice a / bob tie (differ), q2 b / b (same) -> 1 of 2 labeler pairs
    assert (s["agreement"], s["agreement_pairs"]) == (0.5, 2)
    assert jd.summary(recs, V[1], V[0])["rate"] == pytest.approx(1 - 1.75 / 3)  # the other way round
    assert jd.pairs(recs) == [tuple(V), tuple(V[::-1]), ("models:/x/1", V[1])]


def test_gate_takes_human_ab_judgements_after_gold_and_before_the_judge():
    recs = [rec(f"q{i}", "alice", "a" if i % 4 else "tie") for i in range(24)]
    m = ab_metrics(recs, *V, min_items=20)
    assert m["ab_win_rate_vs_ref"] == pytest.approx((18 + 3) / 24) and m["ab_n"] == 24 and m["ab_labelers"] == 1
    assert ab_metrics(recs[:19], *V, min_items=20) == {}  # too few prompts: not a measure
    no_gold = {k: v for k, v in METRICS.items() if not k.startswith("win_rate")}
    judged = {"judge_win_rate_vs_ref": 0.4, "judge_win_rate_vs_ref_lo": 0.3, "judge_win_rate_vs_ref_hi": 0.5}
    ref = {**no_gold, "judge_win_rate_vs_ref_lo": 0.5}
    (ok, why), = [(ok, why) for n, ok, why in gate({**no_gold, **judged, **m}, ref, PromoteConfig()) if n == "win_rate"]
    assert ok and "judged by blind A/B judgements (24 prompts, 24 judgements by 1 labelers" in why
    (ok, why), = [(ok, why) for n, ok, why in gate({**METRICS, **m, "win_rate_vs_ref_lo": 0.45}, METRICS,
                                                   PromoteConfig()) if n == "win_rate"]
    assert not ok and "judged by the gold reward" in why
    (ok, why), = [(ok, why) for n, ok, why in gate({**no_gold, "model_version": V[0]}, {**no_gold, "model_version": V[1]},
                                                   PromoteConfig()) if n == "win_rate"]
    assert not ok and f"rlhf label --compare {V[0]} {V[1]}" in why and "evaluate.judge" in why


# ------------------------------------------------------------------------------ writes and refusals
def test_bad_judgements_are_refused_with_a_clear_message_and_nothing_written(tmp_path):
    queue = ab.read_pair_queue(write_pairs(tmp_path))
    out = tmp_path / "data" / "judgements.jsonl"
    item = queue["q1-aaaa"]
    app = ab.make_app(tmp_path / "ab_queue.jsonl", out, labeler="alice")
    with running(app) as url:
        for body, status, field, text in [
            (judgement(item, "alice", "first") | {"queue_item": "nope"}, 404, "queue_item", "unknown item 'nope'"),
            (judgement(item, "alice", "first") | {"pair": ab.pair_token(["models:/policy/4", V[1]])}, 409, "pair",
             "does not match the model versions of queue item 'q1-aaaa'"),
            (judgement(item, "alice", "first") | {"pair": None}, 409, "pair", "does not match"),
            (judgement(item, "alice", "better"), 422, "choice", "'better' is not one of ['first', 'second', 'tie']"),
            (judgement(item, "alice", "tie") | {"shown": ["17 + 25 = 42.", "Lima."]}, 422, "shown",
             "must be the 2 answers of item 'q1-aaaa'"),
            (judgement(item, "al ice", "tie"), 422, "labeler", "'al ice' is not a labeler name"),
            (b"{not json", 400, "body", "not valid JSON"),
            ([1, 2], 400, "body", "expected a JSON object, got list"),
        ]:
            code, resp = post(url + "/api/judge", body)
            assert (code, resp["field"]) == (status, field) and text in resp["error"], (body, resp)
        assert not out.exists()  # nothing written by any of them
        code, resp = post(url + "/api/judge", judgement(item, "alice", "second"))
        assert code == 200 and resp["done"] == 1 and not resp["duplicate"]
        code, resp = post(url + "/api/judge", judgement(item, "alice", "first"))
        assert code == 200 and resp["duplicate"]  # the first judgement is kept
    (r,), shown = read_jsonl(out), ab.shown_answers(item, "alice", 0)
    assert r["winner"] == ("a" if shown[1] == item["answers"][0] else "b") and r["model_versions"] == V
    assert r["shown_first"] == ("a" if shown[0] == item["answers"][0] else "b")


def test_the_judgements_suite_names_file_line_record_and_field(tmp_path):
    queue = ab.read_pair_queue(write_pairs(tmp_path))
    out = tmp_path / "judgements.jsonl"
    for i, (item, choice) in enumerate(zip(queue.values(), ("first", "second", "tie"))):
        ab.judge(queue, out, judgement(item, "alice", choice))
    assert rules.check_judgements(tmp_path, tmp_path / "report", ()) == 3
    recs = read_jsonl(out)
    recs[1] |= {"model_versions": [V[0], V[0]]}
    recs[2] |= {"winner": "A"}
    write_jsonl(out, recs)
    with pytest.raises(ValidationFailed) as e:
        rules.check_judgements(tmp_path, tmp_path / "report", ())
    text = str(e.value)
    assert f"{out}:2 [q2-bbbb/alice] model_versions: one_pair" in text and "2 distinct model versions" in text
    assert f"{out}:3 [q3-cccc/alice] winner: allowed_value" in text and "'A' is not one of ['a', 'b', 'tie']" in text
    assert json.loads((tmp_path / "report" / "report.json").read_text())["success"] is False


# ------------------------------------------------------------------------------ the page
def test_ab_page_in_a_real_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install -y chromium chromium-driver; `make test` does it)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra").sync_playwright
    queue = ab.read_pair_queue(write_pairs(tmp_path))
    out = tmp_path / "data" / "judgements.jsonl"
    app = ab.make_app(tmp_path / "ab_queue.jsonl", out, seed=7, labeler="alice")
    with running(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#task:not([hidden])")
            item = queue["q1-aaaa"]
            shown = [page.inner_text(f"#answer-{i}") for i in range(2)]
            assert shown == ab.shown_answers(item, "alice", 7) and "<b>43</b> & more" in shown  # text, not HTML
            html = page.content()
            assert all(v not in html for v in V) and "policy" not in html  # the models stay hidden
            assert page.inner_text("#prompt") == item["prompt"] and page.inner_text("#progress") == "0 done · 3 remaining"
            page.screenshot(path=str(tmp_path / "ab_page.png"))
            page.click("#second")                      # answer 2 is better
            page.wait_for_selector("#msg.ok")
            assert page.inner_text("#msg") == "Saved: answer 2 is better."
            page.wait_for_function(f"document.querySelector('#prompt').textContent === {json.dumps(PAIRS[1]['prompt'])}")
            page.keyboard.press("t")                   # a tie, by key
            page.wait_for_function(f"document.querySelector('#prompt').textContent === {json.dumps(PAIRS[2]['prompt'])}")
            page.keyboard.press("s")                   # skip the last one
            page.wait_for_selector("#empty:not([hidden])")
            assert "Only 1 skipped item(s) left" in page.inner_text("#empty")
            assert page.inner_text("#progress") == "2 done · 1 remaining"
        finally:
            browser.close()
    r1, r2 = read_jsonl(out)
    side = {a: s for a, s in zip(item["answers"], "ab")}
    assert r1 == {"id": "q1-aaaa/alice", "prompt": item["prompt"], "responses": item["answers"], "model_versions": V,
                  "winner": side[shown[1]], "shown_first": side[shown[0]], "prompt_type": "closed",
                  "labeled_at": r1["labeled_at"], "queue_item": "q1-aaaa", "labeler": "alice"}
    assert (r2["queue_item"], r2["winner"]) == ("q2-bbbb", "tie")
    assert rules.check_judgements(out.parent, tmp_path / "report", ()) == 2


# ------------------------------------------------------------------------------ sampling and the simulated labeler
@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory):
    """The tiny model and a copy with perturbed weights (a second 'version' that answers differently)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tmp_path_factory.mktemp("ab")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp / "other")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp / "other")
    return tmp, str(tiny_model_dir), str(tmp / "other")


def test_cli_compare_samples_judges_simulated_and_reports(two_models, capsys):
    from components.apps import cli
    from components.datasets import synth

    tmp, a, b = two_models
    synth.synthesize(tmp / "data", seed=0, n_demonstrations=8, n_comparisons=8, n_prompts=8, n_pretrain=8,
                     k_min=4, k_max=4, label_noise=0.05, tie_margin=0.02, n_users=6)
    sets = ["-S", "common.profile=test", "-S", f"common.outputs_dir={tmp}/outputs", "-S", f"common.data_dir={tmp}/data",
            "-S", "label.max_new_tokens=8", "-S", f"label.ab_queue={tmp}/ab_queue.jsonl"]
    assert cli.main(["label", "--compare", a, b, "--simulated", "--labelers", "2", *sets]) == 0
    text = capsys.readouterr().out
    queue = ab.read_pair_queue(tmp / "ab_queue.jsonl")
    assert f"wrote {tmp}/ab_queue.jsonl: {len(queue)} items comparing" in text and 1 <= len(queue) <= 8
    recs = read_jsonl(tmp / "data" / "judgements.jsonl")
    assert len(recs) == 2 * len(queue) and {r["labeler"] for r in recs} == {"sim-0", "sim-1"}
    versions = queue[next(iter(queue))]["model_versions"]
    assert all(r["model_versions"] == versions for r in recs) and "win rate of A" in text
    assert f"n = {len(queue)} items, {2 * len(queue)} judgements by 2 labelers" in text
    # the simulated labeler follows the gold reward (plus noise): its verdicts agree with it on clear items
    for r in recs:
        g = [synth.gold_reward(r["prompt"], x) for x in r["responses"]]
        if abs(g[0] - g[1]) > 0.5:
            assert r["winner"] == ("a" if g[0] > g[1] else "b")
    # a second --compare of the same models reuses the queue and writes no duplicate
    assert cli.main(["label", "--compare", a, b, "--simulated", "--labelers", "2", *sets]) == 0
    assert "reused" in capsys.readouterr().out and len(read_jsonl(tmp / "data" / "judgements.jsonl")) == len(recs)
    assert cli.main(["label", "--report", *sets, "--queue", str(tmp / "queue.jsonl")]) == 0
    assert "inter-labeler agreement (same verdict)" in capsys.readouterr().out
    cfg = load_config(overrides=[s for s in sets if s != "-S"])
    assert rules.check_judgements(cfg.data_dir, tmp / "report", rules.control_tokens_for(cfg)) == len(recs)


def test_compare_refuses_one_model_twice(tiny_model_dir, tmp_path):
    from components.core.errors import DataError

    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={tmp_path}"])
    write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "prompt": "Say hi."}])
    with pytest.raises(DataError, match="both are .*compare two different model versions"):
        ab.sample_pair(cfg, str(tiny_model_dir), str(tiny_model_dir), tmp_path / "p.jsonl")
    assert label.read_records(tmp_path / "label" / "ab_queue.jsonl") == []
