"""Stage promote — the promotion gate: which model becomes ``champion``.

The candidate (``promote.candidate``: the stage whose registered version this run produced) always
gets alias ``candidate``. It gets ``champion`` only if every check against the reference (SFT)
holds; otherwise the previous champion stays, and the reasons are written on the candidate's
model version (tag ``promotion``) and in ``outputs/promote/report.md``. The win rate comes from the gold
reward, else from blind A/B judgements of the two registered versions (``<common.data_dir>/judgements.jsonl``,
``rlhf label --compare``), else from a judge reward model (``PREFERENCE_SOURCES``).
"""

from __future__ import annotations

import json
import sys

from components.core.config import Config, PromoteConfig
from components.core.env import set_offline_env
from components.core.errors import DataError
from components.core.registry import CANDIDATE, CHAMPION, evaluation_file, registered_name
from components.core.stage import stage_main
from components.datasets import judgements
from components.datasets.rules import check_judgements
from components.maths.stats import difference_se


# Where the win rate comes from, best first: (metric prefix, what the report says judged it). The gold and
# judge win rates are evaluation metrics of both models; the blind A/B one (``ab_``) is measured on the pair
# itself, from the judgements of these two model versions (``ab_metrics``), so only the candidate carries it.
PREFERENCE_SOURCES = (("", "the gold reward (the simulated labeler)"),
                      ("ab_", "blind A/B judgements ({n} prompts, {judgements} judgements by {labelers} labelers, "
                              "rlhf label --compare)"),
                      ("judge_", "the judge reward model (evaluate.judge: a labelled proxy, not the policy's reward model)"))
NO_PREFERENCE = ("no preference measure for both models: the gold reward exists only for the built-in prompts; for "
                 "other prompts judge the two models blind (rlhf label --compare {candidate} {reference}) or set "
                 "evaluate.judge to a reward model trained apart from the policy's (e.g. on the held-out rankings), "
                 "and rerun")


def preference_source(candidate: dict, reference: dict) -> tuple[str, str] | None:
    """The first source of ``PREFERENCE_SOURCES`` with a win rate of the candidate over the reference
    (None: none has): gold and judge need the metric on both models, A/B on the candidate."""
    for prefix, judged_by in PREFERENCE_SOURCES:
        if prefix == "ab_":
            if "ab_win_rate_vs_ref_lo" in candidate:
                return prefix, judged_by.format(**{k: int(candidate[f"ab_{k}"]) for k in ("n", "judgements", "labelers")})
        elif all(f"{prefix}win_rate_vs_ref_lo" in m for m in (candidate, reference)):
            return prefix, judged_by
    return None


def ab_metrics(records: list[dict], candidate: str, reference: str, min_items: int) -> dict:
    """``ab_win_rate_vs_ref`` (+ ``_se``, ``_lo``, ``_hi``) and ``ab_n``, ``ab_judgements``, ``ab_labelers`` of
    the candidate version over the reference version from blind A/B judgements; {} when fewer than
    ``min_items`` prompts of this pair were judged."""
    s = judgements.summary(records, candidate, reference)
    if s["n"] < min_items:
        return {}
    return {"ab_win_rate_vs_ref": s["rate"], "ab_win_rate_vs_ref_se": s["se"], "ab_win_rate_vs_ref_lo": s["lo"],
            "ab_win_rate_vs_ref_hi": s["hi"], "ab_n": s["n"], "ab_judgements": s["judgements"],
            "ab_labelers": s["labelers"]}


def gate(candidate: dict, reference: dict, pc: PromoteConfig) -> list[tuple[str, bool, str]]:
    """The checks, each (name, passed, explanation). Pure: metrics dicts in, verdicts out.

    A metric missing on either side fails its check (a gate that cannot measure does not pass).
    """
    checks = []

    def check(name: str, key: str, ok, describe: str, pair_metric: bool = False) -> None:
        # pair_metric: measured on the pair itself (A/B judgements), so the reference has no value of its own
        c, r = candidate.get(key), (0.5 if pair_metric else reference.get(key))
        if c is None or r is None or c != c or r != r:  # missing or NaN
            checks.append((name, False, f"{key} not measured for both models"))
            return
        passed = bool(ok(c, r))
        checks.append((name, passed, describe.format(c=c, r=r)))

    # the win rate's 95% interval must lie above min_win_rate: a candidate no better than SFT (all
    # ties: 0.5, [0.5, 0.5]) is not promoted; a lucky point estimate on a small set is not enough
    source = preference_source(candidate, reference)
    if source is None:
        checks.append(("win_rate", False, NO_PREFERENCE.format(candidate=candidate.get("model_version", "CANDIDATE"),
                                                               reference=reference.get("model_version", "SFT"))))
    else:
        prefix, judged_by = source
        rate, hi = candidate.get(f"{prefix}win_rate_vs_ref"), candidate.get(f"{prefix}win_rate_vs_ref_hi")
        check("win_rate", f"{prefix}win_rate_vs_ref_lo", lambda c, r: c > pc.min_win_rate,
              f"win rate vs SFT {rate if rate is not None else float('nan'):.3f}, 95% interval [{{c:.3f}}, "
              f"{hi if hi is not None else float('nan'):.3f}] (its lower bound must exceed {pc.min_win_rate}); "
              f"judged by {judged_by}", pair_metric=prefix == "ab_")
    check("toxicity", "expected_max_toxicity", lambda c, r: c <= r + pc.toxicity_epsilon,
          "expected max toxicity {c:.3f} vs SFT {r:.3f} (allowed + " + f"{pc.toxicity_epsilon})"
          + toxicity_error(candidate, reference))
    check("truthfulqa", "truthfulqa_mc1", lambda c, r: c >= r - pc.truthfulqa_epsilon,
          "TruthfulQA MC1 {c:.3f} vs SFT {r:.3f} (allowed - " + f"{pc.truthfulqa_epsilon})")
    for key, label in (("squad_f1", "SQuAD F1"), ("hellaswag_acc", "HellaSwag accuracy")):
        check(key, key, lambda c, r: c >= r - pc.allowed_tax,
              label + " {c:.3f} vs SFT {r:.3f} (allowed tax " + f"{pc.allowed_tax})")
    check("perplexity", "perplexity", lambda c, r: c <= r * pc.allowed_perplexity_ratio,
          "perplexity {c:.2f} vs SFT {r:.2f} (allowed x" + f"{pc.allowed_perplexity_ratio})")
    return checks


def toxicity_error(candidate: dict, reference: dict) -> str:
    """The toxicity difference with its standard error, for the gate's explanation ('' when not measured):
    the check compares point estimates, and on a few prompts the difference is often inside its error."""
    try:
        c, r = candidate["expected_max_toxicity"], reference["expected_max_toxicity"]
        se = difference_se(candidate["expected_max_toxicity_std"], int(candidate["toxicity_n"]),
                           reference["expected_max_toxicity_std"], int(reference["toxicity_n"]))
    except (KeyError, TypeError, ValueError):
        return ""
    if se != se:
        return ""
    within = " (within its error)" if abs(c - r) <= se else ""
    return (f"; difference {c - r:+.3f} ± {se:.3f} (standard error, {int(candidate['toxicity_n'])} and "
            f"{int(reference['toxicity_n'])} prompts){within}").replace("{", "{{").replace("}", "}}")


def report_markdown(name: str, version: str, checks, promoted: bool, previous: str | None,
                    candidate: dict | None = None, reference: dict | None = None) -> str:
    """The verdict, each check, and (for the record, not checked) the flaw rates of both models."""
    verdict = (f"**{name} v{version} promoted to `champion`**" if promoted else
               f"**{name} v{version} not promoted**; `champion` stays "
               + (f"v{previous}" if previous else "unset"))
    lines = [f"# Promotion gate: {name} v{version}", "", verdict, "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {n} | {'pass' if ok else 'FAIL'} | {why} |" for n, ok, why in checks]
    rates = sorted(k for k in (candidate or {}) if k.endswith("_rate") or k.endswith("_rate_sampled"))
    if rates:
        lines += ["", "| flaw rate (share of answers) | candidate | SFT |", "|---|---|---|"]
        lines += [f"| {k} | {candidate[k]:.3f} | {(reference or {}).get(k, float('nan')):.3f} |" for k in rates]
    return "\n".join(lines) + "\n"


def reference_version(cfg: Config) -> str:
    """``models:/<name>/<version>`` of the reference (SFT) as its stage registered it ('' if it did not)."""
    f = cfg.metrics_file(cfg.evaluate.reference)
    version = json.loads(f.read_text()).get("model_version") if f.exists() else None
    return f"models:/{registered_name(cfg.evaluate.reference)}/{version}" if version is not None else ""


def run(cfg: Config) -> dict:
    """Read the evaluation of the candidate and the reference; set aliases; write the report."""
    import mlflow
    from mlflow import MlflowClient

    set_offline_env()
    pc = cfg.promote
    stage = pc.candidate
    out = cfg.out_dir("promote")
    out.mkdir(parents=True, exist_ok=True)
    name = registered_name(stage)
    cand_file, ref_file = evaluation_file(cfg, stage), evaluation_file(cfg, cfg.evaluate.reference)
    for f in (cand_file, ref_file):
        if not f.exists():
            raise DataError(f"{f}: no evaluation (is '{f.stem}' in evaluate.models, and did evaluate run?)")
    stage_metrics = cfg.metrics_file(stage)
    version = json.loads(stage_metrics.read_text()).get("model_version") if stage_metrics.exists() else None
    if version is None:
        raise DataError(f"{stage_metrics}: no model_version (did stage '{stage}' register its model?)")
    version = str(version)

    cand, ref = json.loads(cand_file.read_text()), json.loads(ref_file.read_text())
    cand["model_version"] = f"models:/{name}/{version}"
    ref["model_version"] = reference_version(cfg)
    # the judgements' suite (no control-token rule here: judgements train nothing; `rlhf label --commit` has it)
    if check_judgements(cfg.data_dir, out / "judgements", control_tokens=()):
        cand |= ab_metrics(judgements.read(cfg.data_dir / judgements.FILE), cand["model_version"],
                           ref["model_version"], pc.min_ab_prompts)
    checks = gate(cand, ref, pc)
    promoted = all(ok for _, ok, _ in checks)
    client = MlflowClient()
    try:
        previous = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        previous = None
    client.set_registered_model_alias(name, CANDIDATE, version)
    failed = [why for _, ok, why in checks if not ok]
    client.set_model_version_tag(name, version, "promotion", CHAMPION if promoted else "rejected: " + "; ".join(failed))
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    report = report_markdown(name, version, checks, promoted, previous, cand, ref)
    (out / "report.md").write_text(report)
    mlflow.log_artifact(str(out / "report.md"))
    print(report, flush=True)
    champion = version if promoted else previous
    return {"candidate": f"{name}/{version}", "promoted": promoted, "champion": f"{name}/{champion}" if champion else "none",
            "checks_passed": sum(ok for _, ok, _ in checks), "checks": len(checks)}


if __name__ == "__main__":
    sys.exit(stage_main("promote", run))
