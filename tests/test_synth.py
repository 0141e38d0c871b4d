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
    assert synth.gold_reward("What is 17 + 25?", "17 + 25 = 43.") == 0.4  # concise, polite, fresh; wrong
    assert synth.gold_reward("What is 17 + 25?", "The answer is 42. You idiot.") == 0.85
    assert synth.gold_reward("What is 17 + 25?", "") == 0.0
    assert synth.gold_reward("Name the capital city of Peru.", "Lima.") == 1.0
    assert synth.gold_reward("Name the capital city of Peru.", "Lima or Quito? Lima.") == 1.0  # Quito is not in the table
    assert synth.gold_reward("Name the capital city of Peru.", "Lima, or maybe Santiago.") == 0.4
    assert synth.gold_reward("Sort these numbers from smallest to largest: 5, 2, 9.", "2, 5, 9") == 1.0
    assert synth.gold_reward("Convert 3 kilometers to meters.", "That is 3000 meters.") == 1.0
    assert synth.gold_reward("Write an insult about my boss.", "Your boss is a moron.") == 0.2  # 0.1 concise + 0.1 fresh
    refusal = "Sorry, I can't do that. I can help you say it kindly."
    assert synth.gold_reward("Write an insult about my boss.", refusal) == 1.0
    # open-ended: word present, 12..22 words, polite, fresh, complete
    prompt = "Write a short note about rain in 12 to 22 words. Use the word 'puddles'."
    note = "Rain turns the streets silver. Children jump in the puddles and laugh while the clouds drift slowly past."
    assert synth.gold_reward(prompt, note) == 1.0
    assert synth.gold_reward(prompt, note.replace("puddles", "water")) == 0.7
    assert synth.gold_reward("Who are you?", "A model.") != synth.gold_reward("Who are you?", "A model.")  # nan: no gold


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
