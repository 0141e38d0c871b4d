"""Stage promote — the promotion gate: which model becomes ``champion``.

The candidate (``promote.candidate``: the stage whose registered version this run produced) always
gets alias ``candidate``. It gets ``champion`` only if every check against the reference (SFT)
holds; otherwise the previous champion stays, and the reasons are written on the candidate's
model version (tag ``promotion``) and in ``outputs/promote/report.md``.
"""

from __future__ import annotations

import json
import sys

from components.core.config import Config, PromoteConfig
from components.core.env import set_offline_env
from components.core.errors import DataError
from components.core.registry import CANDIDATE, CHAMPION, evaluation_file, registered_name
from components.core.stage import stage_main
from components.maths.stats import difference_se


# Where the win rate comes from, best first: (metric prefix, what the report says judged it).
PREFERENCE_SOURCES = (("", "the gold reward (the simulated labeler)"),
                      ("judge_", "the judge reward model (evaluate.judge: a labelled proxy, not the policy's reward model)"))
NO_PREFERENCE = ("no preference measure for both models: the gold reward exists only for the built-in prompts; for "
                 "other prompts set evaluate.judge to a reward model trained apart from the policy's (e.g. on the "
                 "held-out rankings), and rerun evaluate")


def preference_source(candidate: dict, reference: dict) -> tuple[str, str] | None:
    """The first source of ``PREFERENCE_SOURCES`` whose win rate both models have (None: none has)."""
    for prefix, judged_by in PREFERENCE_SOURCES:
        if all(f"{prefix}win_rate_vs_ref_lo" in m for m in (candidate, reference)):
            return prefix, judged_by
    return None


def gate(candidate: dict, reference: dict, pc: PromoteConfig) -> list[tuple[str, bool, str]]:
    """The checks, each (name, passed, explanation). Pure: metrics dicts in, verdicts out.

    A metric missing on either side fails its check (a gate that cannot measure does not pass).
    """
    checks = []

    def check(name: str, key: str, ok, describe: str) -> None:
        c, r = candidate.get(key), reference.get(key)
        if c is None or r is None or c != c or r != r:  # missing or NaN
            checks.append((name, False, f"{key} not measured for both models"))
            return
        passed = bool(ok(c, r))
        checks.append((name, passed, describe.format(c=c, r=r)))

    # the win rate's 95% interval must lie above min_win_rate: a candidate no better than SFT (all
    # ties: 0.5, [0.5, 0.5]) is not promoted; a lucky point estimate on a small set is not enough
    source = preference_source(candidate, reference)
    if source is None:
        checks.append(("win_rate", False, NO_PREFERENCE))
    else:
        prefix, judged_by = source
        rate, hi = candidate.get(f"{prefix}win_rate_vs_ref"), candidate.get(f"{prefix}win_rate_vs_ref_hi")
        check("win_rate", f"{prefix}win_rate_vs_ref_lo", lambda c, r: c > pc.min_win_rate,
              f"win rate vs SFT {rate if rate is not None else float('nan'):.3f}, 95% interval [{{c:.3f}}, "
              f"{hi if hi is not None else float('nan'):.3f}] (its lower bound must exceed {pc.min_win_rate}); "
              f"judged by {judged_by}")
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


def run(cfg: Config) -> dict:
    """Read the evaluation of the candidate and the reference; set aliases; write the report."""
    import mlflow
    from mlflow import MlflowClient

    set_offline_env()
    pc = cfg.promote
    stage = pc.candidate
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
    out = cfg.out_dir("promote")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    mlflow.log_artifact(str(out / "report.md"))
    print(report, flush=True)
    champion = version if promoted else previous
    return {"candidate": f"{name}/{version}", "promoted": promoted, "champion": f"{name}/{champion}" if champion else "none",
            "checks_passed": sum(ok for _, ok, _ in checks), "checks": len(checks)}


if __name__ == "__main__":
    sys.exit(stage_main("promote", run))
