"""lm-evaluation-harness: our scorer gives the harness's numbers on the same items; local tasks run offline."""

from __future__ import annotations

import conftest
import pytest
import torch

from components.core import harness
from components.core.encode import answer_ids
from components.core.errors import ConfigError
from components.datasets import eval_sets
from components.stages.evaluate import choice_logprobs


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from components.core.models import load_model_dir

    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    inc = harness.write_local_tasks(tmp_path_factory.mktemp("lm_eval"), eval_sets.BUILTIN["hellaswag"],
                                    eval_sets.load_truthfulqa(None))
    return inc, harness.check_tasks(list(harness.LOCAL_TASKS), inc)


def _harness_items(manager, task_name: str):
    """(context, [continuations], gold) of every document, exactly as the harness builds its requests."""
    from lm_eval.tasks import get_task_dict

    task = get_task_dict([task_name], manager)[task_name]
    docs = list(task.test_docs())
    return task, [(task.doc_to_text(d), [task.config.target_delimiter + c for c in task.doc_to_choice(d)],
                   task.doc_to_target(d)) for d in docs]


def test_unknown_task_is_refused_with_its_name(local_tasks):
    with pytest.raises(ConfigError, match="unknown to lm-eval: no_such_task.*rlhf_hellaswag"):
        harness.check_tasks(["rlhf_truthfulqa_mc1", "no_such_task"], local_tasks[0])


@pytest.mark.slow
def test_our_shared_prefix_scorer_gives_the_harness_log_likelihoods(tiny, local_tasks):
    """The same (context, continuation) strings through HFLM.loglikelihood and our choice_logprobs."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu")
    for task_name in ("rlhf_hellaswag", "rlhf_truthfulqa_mc1"):
        _, items = _harness_items(local_tasks[1], task_name)
        for ctx, conts, _ in items[:4]:
            theirs = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, (ctx, c), i)
                                                        for i, c in enumerate(conts)], disable_tqdm=True)]
            prefix = tok(ctx, add_special_tokens=False)["input_ids"]
            ours = choice_logprobs(model, prefix, [answer_ids(tok, c) for c in conts], tok.pad_token_id)
            assert ours.tolist() == pytest.approx(theirs, abs=2e-4), (task_name, ctx[-60:])


@pytest.mark.slow
def test_local_tasks_run_through_the_harness_and_match_our_accuracy(tiny, local_tasks):
    model, tok = tiny
    inc, manager = local_tasks
    m = harness.run_tasks(model, tok, ["rlhf_hellaswag", "rlhf_truthfulqa_mc1"], include_path=inc, limit=10,
                          manager=manager)
    assert m["lm_eval_rlhf_hellaswag_n"] == 10 and m["lm_eval_rlhf_truthfulqa_mc1_n"] == 10
    assert 0 < m["lm_eval_rlhf_hellaswag_acc_stderr"] and "lm_eval_rlhf_hellaswag_acc_norm" in m
    # the harness's accuracy is our argmax of summed log-likelihoods on the same items
    for task_name in ("rlhf_hellaswag", "rlhf_truthfulqa_mc1"):
        _, items = _harness_items(manager, task_name)
        hits = []
        for ctx, conts, gold in items[:10]:
            prefix = tok(ctx, add_special_tokens=False)["input_ids"]
            lp = choice_logprobs(model, prefix, [answer_ids(tok, c) for c in conts], tok.pad_token_id)
            hits.append(int(torch.argmax(lp)) == int(gold))
        assert m[f"lm_eval_{task_name}_acc"] == pytest.approx(sum(hits) / len(hits)), task_name


@pytest.mark.slow
def test_the_real_truthfulqa_file_runs_as_a_local_task(tiny, tmp_path):
    items = eval_sets.load_truthfulqa(conftest.shared_file("truthfulqa", "mc_task.json"))
    assert len(items) == 817
    inc = harness.write_local_tasks(tmp_path, eval_sets.BUILTIN["hellaswag"], items)
    model, tok = tiny
    m = harness.run_tasks(model, tok, ["rlhf_truthfulqa_mc1", "rlhf_truthfulqa_mc2"], include_path=inc, limit=12)
    assert m["lm_eval_rlhf_truthfulqa_mc1_n"] == 12 and 0 <= m["lm_eval_rlhf_truthfulqa_mc2_acc"] <= 1
