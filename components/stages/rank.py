"""Stage rank — InstructGPT step 2's data: labelers rank K answers *sampled from the model*.

The SFT model answers the prompts of ``comparisons.jsonl`` (K = ``rank.k_min``..``rank.k_max``
distinct samples per prompt, the sampling code of ``rlhf sample``), and the simulated labeler
ranks them with its noise and ties (``rlhf label --simulated``'s ranking: gold reward +
N(0, ``data.label_noise``), scores within ``data.tie_margin`` tie). Each ranking keeps its prompt's
author (``user_id``), so the train/eval split of the reward model holds out the same users as for
the other files. The rankings go through the same great-expectations gate as the data
(``outputs/rank/report.{json,html}``) and are written to ``outputs/rank/comparisons.jsonl``, which
the reward model and DPO train on.

The stage also measures what it samples: the rate of each behavioural flaw
(``synth.FLAWS``) in the SFT model's answers and their mean gold reward, i.e. the headroom that RL
can reach. Prompts the built-in generator did not write have no gold reward: with such data the
stage writes no rankings and says so; rank the SFT model's samples by hand instead
(``rlhf sample`` + ``rlhf label``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from random import Random

from components.core.config import Config
from components.core.data import FILES, read_jsonl, take, write_jsonl
from components.core.encode import control_tokens
from components.core.env import set_offline_env
from components.core.errors import DataError, ValidationFailed
from components.core.models import load_model_dir
from components.core.sampling import sample_answers
from components.core.stage import stage_main
from components.datasets import rules, synth

STAGE = "rank"
LABELER = "sim-0"


def flaw_rates(prompts: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Share of answers with each flaw (``synth.FLAWS``), of all answers; and their mean gold reward."""
    flat = [(p, a) for p, ans in zip(prompts, answers) for a in ans]
    if not flat:
        return {}
    found = [synth.flaws(synth.parse_task(p), a) for p, a in flat]
    out = {f"{f}_rate": sum(f in x for x in found) / len(flat) for f in synth.FLAWS}
    out["any_flaw_rate"] = sum(bool(x) for x in found) / len(flat)
    out["gold_mean"] = sum(synth.gold_reward(p, a) for p, a in flat) / len(flat)
    return out


def rankings(cfg: Config, recs: list[dict], answers: list[list[str]], model_version: str) -> list[dict]:
    """One comparisons.jsonl record per prompt with >= 2 distinct answers, ranked by the simulated
    labeler (seeded per prompt, so a record does not depend on the others)."""
    out = []
    for rec, ans in zip(recs, answers):
        if len(ans) < 2:
            continue
        rng = Random(f"{cfg.common.seed}:{LABELER}:{rec['id']}")
        ranks = synth.rank_responses(rec["prompt"], ans, rng, cfg.data.label_noise, cfg.data.tie_margin)
        digest = hashlib.sha256(json.dumps([rec["prompt"], ans]).encode()).hexdigest()[:8]
        item = {"id": f"{rec['id']}-sft-{digest}", "prompt": rec["prompt"], "responses": ans, "ranks": ranks}
        for field in ("prompt_type", "user_id", "split"):  # the prompt's author: the split follows it
            if rec.get(field):
                item[field] = rec[field]
        out.append(item | {"model_version": model_version, "labeler": LABELER})
    return out


def run(cfg: Config) -> dict:
    """Sample K answers per comparison prompt from ``outputs/sft``, rank them, gate them, write them."""
    import torch

    set_offline_env()
    rc = cfg.rank
    src = cfg.data_dir / FILES["comparisons"]
    recs = take(read_jsonl(src), rc.max_prompts)
    out_dir = cfg.out_dir(STAGE)
    out_file = out_dir / FILES["comparisons"]
    ours = [r for r in recs if synth.parse_task(r["prompt"]) is not None]
    if not ours:
        write_jsonl(out_file, [])
        print(f"[rank] no prompt of {src} was written by the built-in generator: the simulated labeler has no gold "
              "reward for them, so no rankings of the SFT model's samples are made (rank them by hand: rlhf sample "
              "--model models:/sft@... then rlhf label)", flush=True)
        return {"items": 0, "answers": 0, "prompts_without_gold": len(recs)}
    if len(ours) < len(recs):
        print(f"[rank] {len(recs) - len(ours)} of {len(recs)} prompts have no gold reward and are left out", flush=True)
    model, tok = load_model_dir(cfg.out_dir("sft"))
    if torch.cuda.is_available():
        model.cuda()
    rng = Random(cfg.common.seed)
    ks = [rng.randint(rc.k_min, rc.k_max) for _ in ours]
    print(f"[rank] sampling {sum(ks)} answers (K = {rc.k_min}..{rc.k_max}) to {len(ours)} prompts from "
          f"{cfg.out_dir('sft')}", flush=True)
    t0 = time.time()
    torch.manual_seed(cfg.common.seed)
    answers = sample_answers(model, tok, [r["prompt"] for r in ours], ks, system_prompt=cfg.common.system_prompt,
                             max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                             top_k=rc.top_k, batch_size=rc.batch_size, max_tries=rc.max_tries, desc="[rank]",
                             by_length=True)
    seconds = time.time() - t0
    items = rankings(cfg, ours, answers, "outputs/sft")
    if not items:
        raise DataError(f"{src}: no prompt got 2 distinct answers from the SFT model in {rc.max_tries} rounds")
    write_jsonl(out_file, items)
    report = rules.validate_dir(out_dir, only=(FILES["comparisons"],), eval_fraction=cfg.common.eval_fraction,
                                seed=cfg.common.seed, control_tokens=control_tokens(tok))  # the SFT model's
    json_path, _ = rules.write_report(report, out_dir)
    if not report["success"]:
        out_file.unlink()
        raise ValidationFailed(f"the rankings of the SFT model's samples failed the data gate (report: {json_path})\n"
                               + rules.format_failures(report))
    rates = flaw_rates([r["prompt"] for r in ours], answers)
    spread = [max(g) - min(g) for g in ([synth.gold_reward(it["prompt"], a) for a in it["responses"]] for it in items)]
    metrics = {"items": len(items), "answers": sum(len(it["responses"]) for it in items),
               "fewer_than_k": sum(len(a) < k for a, k in zip(answers, ks)), "dropped": len(ours) - len(items),
               "gold_spread": sum(spread) / len(spread), "sample_seconds": round(seconds, 1),
               **{f"sft_{k}": v for k, v in rates.items()}}
    print(f"[rank] {metrics['items']} rankings of {metrics['answers']} SFT answers in {seconds:.0f} s; flaws in the "
          "SFT samples: " + ", ".join(f"{f} {rates[f + '_rate']:.2f}" for f in synth.FLAWS)
          + f"; mean gold {rates['gold_mean']:.3f}", flush=True)
    return metrics


if __name__ == "__main__":
    sys.exit(stage_main(STAGE, run))
