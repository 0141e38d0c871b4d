"""Stage evaluate — what InstructGPT's section 4 measures, for every model of the run.

For each model (base, sft, dpo, ppo, ppo_ptx by default; any folder or ``models:/`` URI from the CLI):

- **truthfulness**: TruthfulQA MC1 (is the likeliest answer the true one) and MC2 (normalised
  probability mass on the true answers); the question is encoded once, its choices scored as one
  batch on its KV cache (``choice_logprobs``);
- **toxicity**: RealToxicityPrompts protocol — n sampled continuations per prompt, expected
  maximum toxicity and toxicity probability, without and with a respectful instruction;
- **public-NLP regressions** (the alignment tax): extractive QA (SQuAD EM/F1), multiple-choice
  completion (HellaSwag accuracy by log-likelihood), perplexity on held-out pretraining text;
- **preference**: win rate against the reference (SFT) on held-out prompts by the simulated
  labeler's gold reward (ties half), the reward model's score, and gold vs proxy (over-optimisation).

Outputs: ``outputs/evaluate/<model>.json``, ``alignment_tax.md``, a bar chart, DVC metrics, and one
MLflow run per model (nested under the stage run) so the UI compares them.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from components.core.config import ROOT, Config, EvaluateConfig, text_source_name
from components.core.data import FILES, read_jsonl, split_records
from components.core.encode import answer_ids, chat_ids, chat_messages, encode_prompts, pad_batch
from components.core.env import set_offline_env
from components.core.errors import ConfigError, ModelError
from components.core import harness
from components.core.hf_metrics import load_metric
from components.core.models import generate, load_model_dir
from components.core.plots import bar_chart, write_table_csv
from components.core.registry import evaluation_file, label, registered_name, resolve_model
from components.core.scoring import RewardScorer, heldout_nll, per_text_nll
from components.core.stage import stage_main
from components.core.toxicity import make_scorer
from components.core.tracking import lineage_tags, log_metrics, write_metrics
from components.datasets import eval_sets, synth
from components.maths.metrics import mc_scores
from components.maths.stats import compare, mean, paired_difference, prompt_scores, win_rate_summary


# ------------------------------------------------------------------ log-likelihood of choices
@torch.no_grad()
def choice_logprobs(model, prefix: list[int], choices: list[list[int]], pad_id: int) -> torch.Tensor:
    """Sum of log p(choice | prefix) for each choice. The prefix runs once; its KV cache is repeated
    for the choices, which run as one right-padded batch (positions continue after the prefix)."""
    dev = next(model.parameters()).device
    n, p = len(choices), len(prefix)
    out = model(input_ids=torch.tensor([prefix], device=dev), use_cache=True)
    first = out.logits[0, -1].float().log_softmax(-1)                         # p(first choice token | prefix)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    ids, attn = pad_batch(choices, pad_id)
    ids, attn = ids.to(dev), attn.to(dev)
    positions = (p + torch.arange(ids.shape[1], device=dev)).expand(n, -1)
    full_attn = torch.cat([torch.ones(n, p, dtype=attn.dtype, device=dev), attn], dim=1)
    logits = model(input_ids=ids, attention_mask=full_attn, position_ids=positions, past_key_values=cache).logits
    later = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # token t+1 | ..t
    token_lp = torch.cat([first[ids[:, 0]][:, None], later], dim=1) * attn
    return token_lp.sum(1).cpu()


@torch.no_grad()
def choice_logprobs_naive(model, prefix: list[int], choices: list[list[int]], pad_id: int) -> torch.Tensor:
    """The same numbers the plain way: one full forward pass of prefix + choice per choice (benchmark peer)."""
    dev = next(model.parameters()).device
    out = []
    for c in choices:
        x = torch.tensor([prefix + c], device=dev)
        lp = model(input_ids=x).logits[0, :-1].float().log_softmax(-1)
        out.append(lp[len(prefix) - 1:].gather(-1, x[0, len(prefix):, None]).sum())
    return torch.stack(out).cpu()


def truthfulqa(model, tokenizer, items: list[dict], system_prompt: str, scorer=choice_logprobs) -> dict:
    """MC1 and MC2 (means over questions): the question in the chat template, each answer as the reply."""
    mc1s, mc2s = [], []
    for it in tqdm(items, desc="truthfulqa", unit="q"):
        prefix = chat_ids(tokenizer, chat_messages(it["question"], system_prompt), add_generation_prompt=True)
        texts = list(dict.fromkeys([t for t, _ in it["mc1"]] + [t for t, _ in it["mc2"]]))  # each choice once
        lp = scorer(model, prefix, [answer_ids(tokenizer, t) for t in texts], tokenizer.pad_token_id)
        m1, m2 = mc_scores(it["mc1"], it["mc2"], dict(zip(texts, lp.tolist())))
        mc1s.append(m1)
        mc2s.append(m2)
    return {"truthfulqa_mc1": mean(mc1s), "truthfulqa_mc2": mean(mc2s), "truthfulqa_n": len(items)}


def hellaswag(model, tokenizer, items: list[dict]) -> dict:
    """Accuracy of the ending with the highest per-token log-likelihood (plain text, no chat template)."""
    picked = []
    for it in tqdm(items, desc="hellaswag", unit="item"):
        prefix = tokenizer(it["ctx"], add_special_tokens=False)["input_ids"]
        endings = [answer_ids(tokenizer, " " + e.strip()) for e in it["endings"]]
        lp = choice_logprobs(model, prefix, endings, tokenizer.pad_token_id)
        picked.append(int((lp / torch.tensor([len(e) for e in endings])).argmax()))  # per-token log-likelihood
    acc = load_metric("mc_accuracy").compute(predictions=picked, references=[it["label"] for it in items])["accuracy"]
    return {"hellaswag_acc": float(acc), "hellaswag_n": len(items)}


# ------------------------------------------------------------------------------- generation
def squad(model, tokenizer, items: list[dict], ec: EvaluateConfig, system_prompt: str) -> dict:
    """Extractive QA by greedy generation: EM and F1 (0..1) of the answer against the gold spans."""
    prompts = [chat_ids(tokenizer, chat_messages(
        f"Read the passage and answer the question with a short phrase copied from the passage.\n\n"
        f"Passage: {it['context']}\n\nQuestion: {it['question']}", system_prompt), add_generation_prompt=True)
        for it in items]
    answers = generate(model, tokenizer, prompts, ec.squad_max_new_tokens, batch=ec.batch_size, desc="squad")
    answers = [a.split("\n")[0] for a in answers]
    scores = load_metric("squad_em_f1").compute(predictions=answers, references=[it["answers"] for it in items])  # percent
    return {"squad_em": scores["exact_match"] / 100, "squad_f1": scores["f1"] / 100, "squad_n": len(items)}


def toxicity(model, tokenizer, prompts: list[str], ec: EvaluateConfig, system_prompt: str, score, seed: int) -> dict:
    """RealToxicityPrompts protocol, two conditions: the bare sentence start, and the start after the
    respectful instruction. Continuations only are scored."""
    out = {}
    for cond, prefix in (("", ""), ("_respectful", ec.respectful_instruction + "\n")):
        ids = [chat_ids(tokenizer, chat_messages(prefix + p, system_prompt), add_generation_prompt=True)
               for p in prompts for _ in range(ec.toxicity_samples)]
        torch.manual_seed(seed)
        texts = generate(model, tokenizer, ids, ec.toxicity_max_new_tokens, sample=True, top_p=ec.toxicity_top_p,
                         batch=ec.batch_size * 2, desc=f"toxicity{cond}")
        scores = [float(s) for s in score(texts)]
        n = ec.toxicity_samples
        summary = load_metric("toxicity_summary").compute(predictions=[scores[i: i + n] for i in range(0, len(scores), n)])
        out.update({f"{k}{cond}": v for k, v in summary.items()})
    out["toxicity_n"] = len(prompts)
    return out


def flaw_rates(prompts: list[str], answers: list[list[str]], suffix: str = "") -> dict[str, float]:
    """Share of answers with each behavioural flaw (``synth.FLAWS``), over every answer of every prompt."""
    flat = [(synth.parse_task(p), a) for p, ans in zip(prompts, answers) for a in ans]
    found = [synth.flaws(t, a) for t, a in flat]
    return {f"{f}_rate{suffix}": mean(f in x for x in found) for f in synth.FLAWS}


def preference(prompts: list[str], greedy: list[str], ref_greedy: list[str], sampled: list[list[str]] | None,
               ref_sampled: list[list[str]] | None, reward_scorer, seed: int) -> dict:
    """Win rate vs the reference by the gold reward (ties half) with its standard error and a seeded
    bootstrap 95% interval over prompts, for greedy answers and (when given) sampled ones; mean gold
    reward, overall and per task family; the rate of each flaw; the reward model's score."""
    gold = [synth.gold_reward(p, a) for p, a in zip(prompts, greedy)]
    ref = [synth.gold_reward(p, a) for p, a in zip(prompts, ref_greedy)]
    s = win_rate_summary([compare(x, y) for x, y in zip(gold, ref)], seed=seed)
    out = {"win_rate_vs_ref": s["rate"], "win_rate_vs_ref_se": s["se"], "win_rate_vs_ref_lo": s["lo"],
           "win_rate_vs_ref_hi": s["hi"], "preference_n": s["n"], "gold_reward": mean(gold)}
    families = [synth.parse_task(p).family for p in prompts]
    for fam in sorted(set(families)):
        out[f"gold_reward_{fam}"] = mean(g for g, f in zip(gold, families) if f == fam)
    out.update(flaw_rates(prompts, [[a] for a in greedy]))
    if sampled is not None and ref_sampled is not None:
        g = [[synth.gold_reward(p, a) for a in ans] for p, ans in zip(prompts, sampled)]
        r = [[synth.gold_reward(p, a) for a in ans] for p, ans in zip(prompts, ref_sampled)]
        ss = win_rate_summary(prompt_scores(g, r), seed=seed)
        out.update({"win_rate_sampled_vs_ref": ss["rate"], "win_rate_sampled_vs_ref_se": ss["se"],
                    "win_rate_sampled_vs_ref_lo": ss["lo"], "win_rate_sampled_vs_ref_hi": ss["hi"],
                    "gold_reward_sampled": mean(x for xs in g for x in xs)})
        out.update(flaw_rates(prompts, sampled, "_sampled"))
    if reward_scorer is not None:
        out["rm_score"] = mean(reward_scorer.score(prompts, greedy).tolist())
        out["gold_minus_rm"] = out["gold_reward"] - out["rm_score"]  # over-optimisation shows as this falling
    return out


def judge_preference(prompts: list[str], greedy: list[str], ref_greedy: list[str], sampled: list[list[str]] | None,
                     ref_sampled: list[list[str]] | None, judge, seed: int) -> dict:
    """The win rate vs the reference as a judge reward model sees it (``judge.score``; equal scores tie), with
    its standard error and seeded bootstrap 95% interval, greedy and (when given) sampled: ``judge_*`` keys,
    a labelled proxy for prompts without a gold reward."""
    n = len(prompts)

    cache: dict[tuple[str, str], float] = {}

    def score(ps: list[str], answers: list[str]) -> list[float]:
        # each distinct (prompt, answer) scored once for the greedy and sampled answers of both models: the same
        # text always gets the same score, so identical answers tie (under bf16 a text's score moves with the
        # batch it is in), and nothing is scored twice
        new = [x for x in dict.fromkeys(zip(ps, answers)) if x not in cache]
        if new:
            cache.update(zip(new, judge.score([p for p, _ in new], [a for _, a in new]).tolist()))
        return [cache[x] for x in zip(ps, answers)]

    scores = score(prompts + prompts, greedy + ref_greedy)
    s = win_rate_summary([compare(x, y) for x, y in zip(scores[:n], scores[n:])], seed=seed)
    out = {"judge_win_rate_vs_ref": s["rate"], "judge_win_rate_vs_ref_se": s["se"], "judge_win_rate_vs_ref_lo": s["lo"],
           "judge_win_rate_vs_ref_hi": s["hi"], "judge_preference_n": s["n"], "judge_score": mean(scores[:n])}
    if sampled is not None and ref_sampled is not None:
        def per_prompt(answers: list[list[str]]) -> list[list[float]]:
            it = iter(score([p for p, ans in zip(prompts, answers) for _ in ans], [a for ans in answers for a in ans]))
            return [[next(it) for _ in ans] for ans in answers]

        ss = win_rate_summary(prompt_scores(per_prompt(sampled), per_prompt(ref_sampled)), seed=seed)
        out.update({"judge_win_rate_sampled_vs_ref": ss["rate"], "judge_win_rate_sampled_vs_ref_se": ss["se"],
                    "judge_win_rate_sampled_vs_ref_lo": ss["lo"], "judge_win_rate_sampled_vs_ref_hi": ss["hi"]})
    return out


def judge_scorer(cfg: Config):
    """The RewardScorer of ``evaluate.judge`` (a folder or models:/ URI), or None when unset.

    Refuses the policy's own reward model (``outputs/reward`` or the registered ``reward-model``): PPO
    optimised against it, so its verdict on PPO's answers is the over-optimised proxy, not a judge.
    """
    ec = cfg.evaluate
    if not ec.judge:
        return None
    uri_name = ec.judge[len("models:/"):].replace("@", "/").split("/")[0] if ec.judge.startswith("models:/") else None
    if uri_name == registered_name("reward") or Path(ec.judge).resolve() == cfg.out_dir("reward").resolve():
        raise ConfigError(f"evaluate.judge={ec.judge}: this is the policy's own reward model (PPO optimised against it); "
                          "a judge must be trained apart, e.g. on the held-out rankings")
    return RewardScorer(resolve_model(ec.judge, cfg), cfg.common.system_prompt)


def real_text_tax(nll: dict[str, list[float]], ref: dict[str, list[float]] | None) -> dict:
    """The alignment tax on real text, per source: the mean per-token NLL of the model's texts and,
    against the reference (None: this is the reference), the paired change text by text with its
    standard error (positive: the model predicts real text worse than the reference does)."""
    out = {}
    for name, xs in nll.items():
        out[f"text_nll_{name}"] = mean(xs)
        out[f"text_nll_{name}_n"] = len(xs)
        if ref is not None:
            d = paired_difference(xs, ref[name])
            out[f"text_nll_{name}_vs_ref"], out[f"text_nll_{name}_vs_ref_se"] = d["mean"], d["se"]
    return out


# ------------------------------------------------------------------------------- one model
class Suite:
    """The evaluation sets and judges, loaded once and shared by every model."""

    def __init__(self, cfg: Config):
        ec, seed = cfg.evaluate, cfg.common.seed

        def src(value: str, kind: str) -> Path:
            return eval_sets.BUILTIN[kind] if value == "builtin" else Path(value)

        self.cfg = cfg
        self.truthfulqa = eval_sets.load_truthfulqa(src(ec.truthfulqa, "truthfulqa"), limit=ec.truthfulqa_limit or None)
        self.squad = eval_sets.load_squad(src(ec.squad, "squad"), limit=ec.squad_limit or None)
        self.hellaswag = eval_sets.load_hellaswag(src(ec.hellaswag, "hellaswag"), limit=ec.hellaswag_limit or None)
        self.toxicity_file = eval_sets.toxicity_source(ec.toxicity_prompts, ROOT)
        self.toxicity_prompts = eval_sets.load_toxicity_prompts(
            self.toxicity_file, limit=ec.toxicity_limit or None, words=ec.toxicity_words)
        print(f"[evaluate] toxicity: {len(self.toxicity_prompts)} prompts from {self.toxicity_file}, "
              f"scorer {ec.toxicity_scorer}", flush=True)
        self.toxicity_score = make_scorer(ec.toxicity_scorer)
        data = cfg.data_dir
        _, eval_p = split_records(read_jsonl(data / FILES["prompts"]), cfg.common.eval_fraction, seed)
        _, eval_t = split_records(read_jsonl(data / FILES["pretrain"]), cfg.common.eval_fraction, seed)
        prompts = [r["prompt"] for r in (eval_p[: ec.win_rate_prompts] if ec.win_rate_prompts else eval_p)]
        self.gold = bool(prompts) and all(synth.parse_task(p) is not None for p in prompts)  # gold needs synth tasks
        self.judge = judge_scorer(cfg)
        self.prompts = prompts if self.gold or self.judge is not None else []  # answers only when something judges them
        self.texts = [r["text"] for r in eval_t[: ec.perplexity_texts]]
        self.ref_answers: tuple[list[str], list[list[str]] | None] | None = None  # (greedy, sampled) of the reference
        self.tax_texts = {text_source_name(p): eval_sets.load_texts(p, ec.tax_texts_limit) for p in ec.tax_texts}
        self.ref_tax: dict[str, list[float]] | None = None  # per-text NLL of the reference, per source
        self.harness_dir = self.harness_tasks = None  # local lm-eval task definitions, the harness's task index
        if ec.lm_eval_tasks:  # written and checked before any model runs: a misspelt task fails at once
            self._harness_tmp = tempfile.TemporaryDirectory(prefix="rlhf-lm-eval-")
            self.harness_dir = harness.write_local_tasks(Path(self._harness_tmp.name), src(ec.hellaswag, "hellaswag"),
                                                         self.truthfulqa)
            self.harness_tasks = harness.check_tasks(ec.lm_eval_tasks, self.harness_dir)
        reward_dir = cfg.out_dir("reward")
        self.reward_scorer = None
        if (reward_dir / "config.json").exists():
            self.reward_scorer = RewardScorer(reward_dir, cfg.common.system_prompt)

    def answers(self, model, tokenizer) -> tuple[list[str], list[list[str]] | None]:
        """Greedy answers to the held-out prompts, and ``win_rate_samples`` sampled ones per prompt
        (seeded, at ``sample_temperature``), or None when that is 0."""
        ec = self.cfg.evaluate
        ids, _ = encode_prompts(tokenizer, self.prompts, self.cfg.common.system_prompt, ec.max_prompt_length)
        greedy = generate(model, tokenizer, ids, ec.max_new_tokens, batch=ec.batch_size, desc="answers (greedy)",
                          by_length=True)
        if not ec.win_rate_samples:
            return greedy, None
        n = ec.win_rate_samples
        torch.manual_seed(self.cfg.common.seed)
        flat = generate(model, tokenizer, [x for x in ids for _ in range(n)], ec.max_new_tokens, sample=True,
                        temperature=ec.sample_temperature, batch=ec.batch_size, desc=f"answers ({n} sampled)",
                        by_length=True)
        return greedy, [flat[i * n: (i + 1) * n] for i in range(len(ids))]

    def text_nll(self, model, tokenizer) -> dict[str, list[float]]:
        """Per source of ``tax_texts``, each real text's mean next-token NLL."""
        ec = self.cfg.evaluate
        return {name: per_text_nll(model, tokenizer, texts, ec.tax_max_length, ec.batch_size)
                for name, texts in tqdm(self.tax_texts.items(), desc="real-text NLL", unit="source")}

    def reference(self, ref_path: Path) -> None:
        """The reference's answers and real-text NLL, made once: kept when the reference itself is evaluated
        (the stage evaluates it first), else from one load of its model."""
        need_answers = self.prompts and self.ref_answers is None
        need_tax = self.tax_texts and self.ref_tax is None
        if need_answers or need_tax:
            model, tok = load_model_dir(ref_path)
            if need_answers:
                self.ref_answers = self.answers(model, tok)
            if need_tax:
                self.ref_tax = self.text_nll(model, tok)

    def run(self, model_path: Path, ref_path: Path) -> dict:
        """Every metric of one model (a dict of floats)."""
        cfg, ec = self.cfg, self.cfg.evaluate
        t0 = time.time()
        model, tok = load_model_dir(model_path)
        if torch.cuda.is_available():
            model.cuda()
        sp = cfg.common.system_prompt
        m = {}
        m.update(truthfulqa(model, tok, self.truthfulqa, sp))
        m.update(hellaswag(model, tok, self.hellaswag))
        m.update(squad(model, tok, self.squad, ec, sp))
        m.update(toxicity(model, tok, self.toxicity_prompts, ec, sp, self.toxicity_score, cfg.common.seed))
        if ec.lm_eval_tasks:
            m.update(harness.run_tasks(model, tok, ec.lm_eval_tasks, include_path=self.harness_dir,
                                       limit=ec.lm_eval_limit, batch_size=ec.lm_eval_batch_size, seed=cfg.common.seed,
                                       manager=self.harness_tasks))
        if self.texts:
            nll = heldout_nll(model, tok, self.texts, ec.perplexity_max_length)
            m.update({"heldout_lm_loss": nll, "perplexity": math.exp(nll)})
        is_ref = model_path.resolve() == ref_path.resolve()
        nll = self.text_nll(model, tok) if self.tax_texts else None
        answers = self.answers(model, tok) if self.prompts else None
        if is_ref:  # the stage evaluates the reference first: what the others are compared with is made once
            self.ref_tax, self.ref_answers = nll, answers
        self.reference(ref_path)  # else from one load of the reference model
        if nll is not None:
            m.update(real_text_tax(nll, None if is_ref else self.ref_tax))
        if answers is not None:
            (greedy, sampled), (ref_greedy, ref_sampled) = answers, self.ref_answers
            if self.gold:
                m.update(preference(self.prompts, greedy, ref_greedy, sampled, ref_sampled, self.reward_scorer,
                                    cfg.common.seed))
            if self.judge is not None:
                m.update(judge_preference(self.prompts, greedy, ref_greedy, sampled, ref_sampled, self.judge,
                                          cfg.common.seed))
        m["eval_seconds"] = round(time.time() - t0, 1)
        return m


# --------------------------------------------------------------------------------- reports
# (metric, label, higher is better)
TABLE = [("win_rate_vs_ref", "win rate vs SFT (greedy)", True), ("win_rate_vs_ref_lo", "  its 95% interval, low", True),
         ("win_rate_vs_ref_hi", "  its 95% interval, high", True),
         ("win_rate_sampled_vs_ref", "win rate vs SFT (sampled)", True),
         ("win_rate_sampled_vs_ref_lo", "  its 95% interval, low", True),
         ("win_rate_sampled_vs_ref_hi", "  its 95% interval, high", True),
         ("judge_win_rate_vs_ref", "win rate vs SFT, judge RM (greedy)", True),
         ("judge_win_rate_vs_ref_lo", "  its 95% interval, low", True), ("judge_win_rate_vs_ref_hi", "  its 95% interval, high", True),
         ("judge_win_rate_sampled_vs_ref", "win rate vs SFT, judge RM (sampled)", True), ("judge_score", "judge RM score", True),
         ("gold_reward", "gold reward (greedy)", True), ("gold_reward_sampled", "gold reward (sampled)", True),
         *[(f"gold_reward_{f}", f"  gold, {f}", True) for f in synth.FAMILIES],
         *[(f"{f}_rate", f"flaw rate: {f}", False) for f in synth.FLAWS],
         *[(f"{f}_rate_sampled", f"flaw rate: {f} (sampled)", False) for f in synth.FLAWS],
         ("rm_score", "RM score", True), ("truthfulqa_mc1", "TruthfulQA MC1", True),
         ("truthfulqa_mc2", "TruthfulQA MC2", True), ("expected_max_toxicity", "exp. max toxicity", False),
         ("expected_max_toxicity_respectful", "exp. max toxicity (respectful)", False),
         ("toxicity_probability", "toxicity prob.", False), ("squad_f1", "SQuAD F1", True),
         ("squad_em", "SQuAD EM", True), ("hellaswag_acc", "HellaSwag acc", True), ("perplexity", "perplexity", False)]


CHART = ("win_rate_vs_ref", "win_rate_sampled_vs_ref", "gold_reward", "truthfulqa_mc1", "truthfulqa_mc2",
         "expected_max_toxicity", "squad_f1", "hellaswag_acc", *(f"{f}_rate" for f in synth.FLAWS))


def alignment_tax_table(results: dict[str, dict], reference: str) -> str:
    """Markdown: one row per metric, one column per model, the change vs the reference in brackets."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    ref = results.get(reference, {})
    sources = sorted({k[len("text_nll_"):-len("_n")] for r in results.values() for k in r
                      if k.startswith("text_nll_") and k.endswith("_n")})
    rows = list(TABLE)
    for src in sources:
        rows.append((f"text_nll_{src}", f"NLL / token, real text: {src}", False))
    harness_keys = sorted({k for r in results.values() for k in r if k.startswith("lm_eval_")
                           and not k.endswith(("_stderr", "_n"))})
    rows += [(k, f"lm-eval {k[len('lm_eval_'):]}", True) for k in harness_keys]
    for key, title, higher in rows:
        if not any(key in r for r in results.values()):
            continue
        cells = []
        for n in names:
            v = results[n].get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("–")
                continue
            cell = f"{v:.3f}"
            if f"{key}_stderr" in results[n]:  # the harness's standard error
                cell += f" ± {results[n][f'{key}_stderr']:.3f}"
            paired = results[n].get(f"{key}_vs_ref")
            if paired is not None:  # the change text by text, with its standard error
                cell += f" ({paired:+.3f} ± {results[n].get(f'{key}_vs_ref_se', float('nan')):.3f})"
            elif n != reference and key in ref:
                cell += f" ({v - ref[key]:+.3f})"
            cells.append(cell)
        lines.append(f"| {title} {'↑' if higher else '↓'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def toxicity_note(results: dict[str, dict], ec: EvaluateConfig) -> str:
    """What the toxicity rows measured, and the scorer's blind spot, for under the table."""
    n = next((int(m["toxicity_n"]) for m in results.values() if "toxicity_n" in m), 0)
    source = eval_sets.toxicity_source(ec.toxicity_prompts, ROOT)  # the file the Suite read
    note = f"\nToxicity: {n} prompts from `{source}`, {ec.toxicity_samples} continuations each"
    if ec.toxicity_scorer == "profanity-check":
        note += (", scored by profanity-check: it scores profanity, so hate, threats or harassment in clean words score "
                 "low (AUROC on the labelled comments: benchmarks/README.md)")
    return note + ".\n"


def evaluate_models(cfg: Config, models: dict[str, Path], ref_path: Path, *, parent_tags: dict | None = None) -> dict[str, dict]:
    """Evaluate each named model folder; one nested MLflow run per model. Returns {name: metrics}."""
    import mlflow

    suite = Suite(cfg)
    results: dict[str, dict] = {}
    for name, path in models.items():
        print(f"[evaluate] {name}: {path}", flush=True)
        tags = {**lineage_tags(cfg, "evaluate"), "evaluated_model": name, "model_path": str(path), **(parent_tags or {})}
        active = mlflow.active_run()
        if active is not None:
            tags["mlflow.parentRunId"] = active.info.run_id
        with mlflow.start_run(run_name=f"eval-{name}", tags=tags, nested=active is not None):
            m = suite.run(path, ref_path)
            log_metrics("eval", m)
        results[name] = m
        print(f"[evaluate] {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)), flush=True)
    return results


def run(cfg: Config) -> dict:
    """The DVC stage: every model of ``evaluate.models``; per-model JSON, the alignment-tax table, the chart."""
    import mlflow

    set_offline_env()
    ec = cfg.evaluate
    models = {label(s): cfg.out_dir(s) for s in ec.models}
    for name, path in models.items():
        if not (path / "config.json").exists():
            raise ModelError(f"evaluate.models: {path} has no model (did stage '{name}' run?)")
    ref_name = label(ec.reference)
    # The reference first, so its greedy answers are made once.
    order = dict(sorted(models.items(), key=lambda kv: kv[0] != ref_name))
    results = evaluate_models(cfg, order, cfg.out_dir(ec.reference))
    results = {n: results[n] for n in models}
    out = cfg.out_dir("evaluate")
    out.mkdir(parents=True, exist_ok=True)
    for stage in ec.models:
        write_metrics(evaluation_file(cfg, stage), results[label(stage)])
    table = alignment_tax_table(results, ref_name) + toxicity_note(results, ec)
    (out / "alignment_tax.md").write_text(f"# Alignment tax (vs {ref_name})\n\n" + table)
    png = bar_chart(results, [(k, name) for k, name, _ in TABLE if k in CHART], cfg.plots_dir("evaluate") / "models.png")
    write_table_csv(results, [k for k, _, _ in TABLE], cfg.plots_dir("evaluate") / "models.csv")
    mlflow.log_artifact(str(out / "alignment_tax.md"))
    mlflow.log_artifact(str(png), artifact_path="plots")
    print(table, flush=True)
    return {f"{name}.{k}": v for name, m in results.items() for k, v in m.items()}


if __name__ == "__main__":
    sys.exit(stage_main("evaluate", run))
