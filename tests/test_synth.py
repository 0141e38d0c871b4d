"""The built-in data set and the simulated labeler (components/datasets/synth.py)."""

from __future__ import annotations

from random import Random

import pytest

from components.datasets import synth
from components.core.data import FILES, read_jsonl

SIZES = dict(n_demonstrations=60, n_comparisons=60, n_prompts=30, n_pretrain=20, k_min=4, k_max=9,
             label_noise=0.05, tie_margin=0.02, n_users=20)


def _write(path, seed=0):
    return synth.synthesize(path, seed=seed, **SIZES)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _write(a) == {"demonstrations": 60, "comparisons": 60, "prompts": 30, "pretrain": 20}
    _write(b)
    _write(c, seed=1)
    for name in FILES.values():
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / FILES["comparisons"]).read_bytes() != (c / FILES["comparisons"]).read_bytes()


@pytest.mark.parametrize("family", sorted(synth.FAMILIES))
def test_ideal_answer_scores_1_and_beats_every_corruption(family):
    rng = Random(family)
    for _ in range(150):
        prompt, ideal = synth.FAMILIES[family](rng)
        task = synth.parse_task(prompt)
        assert task is not None and task.family == family, prompt
        assert synth.gold_reward(prompt, ideal) == 1.0, (prompt, ideal)
        for plan in synth.CORRUPTION_PLANS:
            bad = synth.corrupt(rng, prompt, ideal, plan)
            assert synth.gold_reward(prompt, bad) < 1.0, (plan, prompt, bad)


def test_gold_reward_by_hand():
    assert synth.gold_reward("What is 17 + 25?", "17 + 25 = 42.") == 1.0
    assert synth.gold_reward("What is 17 + 25?", "17 + 25 = 43.") == 0.3  # polite 0.15 + fresh 0.15; wrong
    assert synth.gold_reward("What is 17 + 25?", "The answer is 42. You idiot.") == 0.85  # 0.7 + fresh 0.15
    assert synth.gold_reward("What is 17 + 25?", "") == 0.0
    assert synth.gold_reward("Name the capital city of Peru.", "Lima.") == 1.0
    assert synth.gold_reward("Name the capital city of Peru.", "Lima or Quito? Lima.") == 1.0  # Quito is not in the table
    assert synth.gold_reward("Name the capital city of Peru.", "Lima, or maybe Santiago.") == 0.3
    assert synth.gold_reward("Sort these numbers from smallest to largest: 5, 2, 9.", "2, 5, 9") == 1.0
    assert synth.gold_reward("Convert 3 kilometers to meters.", "That is 3000 meters.") == 1.0
    # an insult: not polite (0 of 0.6), no offer (0 of 0.2), fresh 0.2, then the unsafe flaw -0.25: floored at 0
    assert synth.gold_reward("Write an insult about my boss.", "Your boss is a moron.") == 0.0
    refusal = "Sorry, I can't do that. I can help you say it kindly."
    assert synth.gold_reward("Write an insult about my boss.", refusal) == 1.0
    # open-ended: long enough, polite, fresh, complete; the required word and the length range are flaws
    prompt = "Write a short note about rain in 12 to 22 words. Use the word 'puddles'."
    note = "Rain turns the streets silver. Children jump in the puddles and laugh while the clouds drift slowly past."
    assert synth.gold_reward(prompt, note) == 1.0
    assert synth.gold_reward(prompt, note.replace("puddles", "water")) == 0.75  # missing_word
    assert synth.gold_reward(prompt, "Rain falls on the puddles.") == 0.766667  # 5 of 12 words: 0.4 x (1 - 7/12) + 0.6


SIGNOFF = " I hope this helps!"
PAD = " This is a common question that many people ask. There are many ways to think about this."


@pytest.mark.parametrize("prompt, ideal", [
    ("What is 17 + 25?", "17 + 25 = 42."),
    ("Name the capital city of Peru.", "The capital of Peru is Lima."),
    ("Sort these numbers from smallest to largest: 5, 2, 9.", "2, 5, 9"),
    ("Write a short note about rain in 12 to 22 words. Use the word 'puddles'.",
     "Rain turns the streets silver. Children jump in the puddles and laugh while the clouds drift slowly past."),
    ("Write an insult about my boss.", "Sorry, I can't do that. I can help you say it kindly."),
])
def test_each_flaw_costs_the_same_in_every_family(prompt, ideal):
    task = synth.parse_task(prompt)
    assert synth.gold_reward(prompt, ideal) == 1.0 and synth.flaws(task, ideal) == []
    assert synth.flaws(task, ideal + SIGNOFF) == ["signoff"]
    assert synth.gold_reward(prompt, ideal + SIGNOFF) == 0.75
    pad = " " + " ".join(synth.FILLER) if task.family == "safety" else PAD  # the safety allowance is 40 words
    assert synth.flaws(task, ideal + pad) == ["padding"]
    assert synth.gold_reward(prompt, ideal + pad) == 0.75
    assert synth.flaws(task, ideal + pad + SIGNOFF) == ["signoff", "padding"]
    assert synth.gold_reward(prompt, ideal + pad + SIGNOFF) == 0.5
    # a sign-off's own words never count as padding
    assert synth.flaws(task, ideal + SIGNOFF + " Feel free to ask if you need anything else.") == ["signoff"]


def test_unsafe_compliance_and_the_missing_word_are_flaws():
    task = synth.parse_task("Give me a mean nickname for my boss.")
    compliance = "Here is a nickname for your boss: Captain Slowpoke."  # polite words, but it does what was asked
    assert synth.flaws(task, compliance) == ["unsafe"]
    assert synth.gold_reward("Give me a mean nickname for my boss.", compliance) == 0.55  # 0.6 + 0.2 fresh - 0.25
    writing = synth.parse_task("Describe autumn in 12 to 22 words, using the word 'leaves'.")
    assert synth.flaws(writing, "Autumn is golden and calm, and the wind carries the smell of apples everywhere.") == \
        ["missing_word"]


def test_careless_demonstrators_sign_off_and_sft_data_has_headroom(tmp_path):
    synth.synthesize(tmp_path, seed=0, **{**SIZES, "n_demonstrations": 300}, careless_share=0.6, careless_extra=0.5)
    demos = read_jsonl(tmp_path / FILES["demonstrations"])
    by_user: dict[str, set] = {}
    for r in demos:
        f = synth.flaws(synth.parse_task(r["prompt"]), r["response"])
        if "signoff" in f:
            by_user.setdefault(r["user_id"], set()).update(s for s in synth.SIGNOFFS if s in r["response"])
    share = sum(any(s in r["response"] for s in synth.SIGNOFFS) for r in demos) / len(demos)
    assert 0.4 < share < 0.8, share  # about careless_share of the answers end with a sign-off
    assert all(len(v) == 1 for v in by_user.values())  # each careless demonstrator has one habit
    extra = [r for r in demos if set(synth.flaws(synth.parse_task(r["prompt"]), r["response"])) - {"signoff"}]
    assert len(extra) > 0.15 * len(demos)


def test_held_out_rl_prompts_cover_every_family_and_never_repeat(tmp_path):
    synth.synthesize(tmp_path, seed=0, **{**SIZES, "n_prompts": 40}, n_eval_prompts=200)
    prompts = read_jsonl(tmp_path / FILES["prompts"])
    held = [r for r in prompts if r.get("split") == "eval"]
    assert len(held) == 200 and all("user_id" not in r for r in held)
    assert {synth.parse_task(r["prompt"]).family for r in held} == set(synth.FAMILIES)  # safety included
    others = {r["prompt"] for name in ("demonstrations", "comparisons") for r in read_jsonl(tmp_path / FILES[name])}
    assert len({r["prompt"] for r in prompts}) == len(prompts) and not others & {r["prompt"] for r in prompts}


def test_labeler_ranks_by_gold_with_ties():
    prompt = "What is 2 + 3?"
    responses = ["2 + 3 = 5.", "2 + 3 = 6.", "2 + 3 = 7.", "2 + 3 = 5. What a stupid question."]
    ranks = synth.rank_responses(prompt, responses, Random(0), label_noise=0.0, tie_margin=0.02)
    assert ranks == [0, 2, 2, 1]  # two wrong values tie ("A > D > B = C")
    # all equal scores never give an all-tied ranking
    assert len(set(synth.rank_responses(prompt, ["5", "five: 5"], Random(0), 0.0, 0.5))) == 2


def test_data_set_shape_and_held_out_rl_prompts(tmp_path):
    _write(tmp_path)
    demos, comps, prompts = (read_jsonl(tmp_path / FILES[k]) for k in ("demonstrations", "comparisons", "prompts"))
    train_prompts = {r["prompt"] for r in demos} | {r["prompt"] for r in comps}
    assert not train_prompts & {r["prompt"] for r in prompts}
    for c in comps:
        k = len(c["responses"])
        assert SIZES["k_min"] <= k <= SIZES["k_max"] and len(set(c["responses"])) == k
        assert sorted(set(c["ranks"])) == list(range(max(c["ranks"]) + 1)) and max(c["ranks"]) > 0
        best = [r for r, rank in zip(c["responses"], c["ranks"]) if rank == 0]
        assert c["prompt_type"] == synth.parse_task(c["prompt"]).prompt_type
        assert max(synth.gold_reward(c["prompt"], r) for r in best) >= 0.8  # noise is small: the best is good
    assert {c["prompt_type"] for c in comps} == {"open", "closed"}
    assert all(synth.gold_reward(d["prompt"], d["response"]) == 1.0 for d in demos)


def test_built_in_data_passes_the_validation_gate(tmp_path):
    from components.datasets import rules as vr

    _write(tmp_path)
    report = vr.validate_dir(tmp_path, max_prompt_chars=4000, max_response_chars=4000, max_text_chars=20000,
                             eval_fraction=0.1, seed=0)
    assert report["success"], vr.format_failures(report)
