"""Blind A/B judgements: a labeler sees a prompt and one answer of each of two models, in an order
seeded per labeler, models hidden, and picks the better answer or a tie.

    rlhf label --compare MODEL_A MODEL_B [--prompts FILE]   the A/B page on http://127.0.0.1:8765
    rlhf label --compare MODEL_A MODEL_B --simulated        the simulated labeler judges (built-in prompts)
    rlhf label --report                                     ... plus A's win rate over B, interval, agreement
    rlhf label --commit                                     the gate (judgements included), then `dvc add`

``--compare`` samples the pair queue (``label.ab_queue``: one answer per model and prompt, the
label section's sampling settings, the first ``label.ab_prompts`` prompts) unless the queue there was
already built for the same two model versions. A queue item is ``{"id", "prompt", "prompt_type"?,
"answers": [A's, B's], "models": [ref A, ref B], "model_versions": [A, B], "sampling"}``; a prompt
where both models wrote the same text is not queued (the summary counts them). Each judgement is
appended to ``<common.data_dir>/judgements.jsonl`` (format: components/datasets/judgements.py) through
label.append_once: locked, one write, fsync, deduped on (queue_item, labeler). A submission names the
item, the two answers as shown, the choice, and the item's pair token (a digest of both model
versions, which the page never shows): a page left open on a queue rebuilt for other models is
refused instead of writing a judgement about the wrong pair.
"""

import gc
import hashlib
import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from random import Random
from typing import Any

from components.apps.label import (MAX_BODY_BYTES, SubmissionError, _item_of, append_once, check_labeler,
                                   model_version_of, page_app, queue_items, read_body, read_prompts, read_records,
                                   require_gold, sample_from, sampling_settings, shown_answers)
from components.apps.label_page import AB_PAGE
from components.core.config import Config, resolve
from components.core.data import write_jsonl
from components.core.errors import DataError
from components.core.registry import resolve_model
from components.datasets import judgements as jd
from components.datasets import synth

CHOICES = ("first", "second", "tie")


def judgements_path(cfg: Config) -> Path:
    return cfg.data_dir / jd.FILE


def pair_token(versions: list[str]) -> str:
    """An opaque name of the two model versions an item compares (the page sends it back)."""
    return hashlib.sha256(json.dumps(list(versions)).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------ the pair queue
def read_pair_queue(path: str | Path) -> dict[str, dict]:
    """Queue id -> item, in file order; refuses an item the A/B page could not show."""
    queue: dict[str, dict] = {}
    for where, item in queue_items(path):
        for field in ("answers", "model_versions"):
            v = item.get(field)
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) and x.strip() for x in v)
                    and v[0] != v[1]):
                raise DataError(f"{where} [{item['id']}]: field '{field}' must be a list of 2 distinct non-empty "
                                f"strings (got {v!r})")
        queue[item["id"]] = item
    return queue


def queue_versions(path: str | Path) -> tuple[str, str] | None:
    """The model versions a pair queue compares (None: no queue there, or it mixes pairs)."""
    if not Path(path).exists():
        return None
    versions = {tuple(item["model_versions"]) for item in read_pair_queue(path).values()}
    return versions.pop() if len(versions) == 1 else None


def sample_pair(cfg: Config, model_a: str, model_b: str, prompts_file: str | Path,
                out_queue: str | Path | None = None, limit: int | None = None) -> dict:
    """One sampled answer of each model per prompt -> the pair queue (written atomically)."""
    lab = cfg.label
    out_queue = resolve(out_queue or lab.ab_queue)
    prompts = read_prompts(prompts_file)[: limit or lab.ab_prompts]
    refs = (str(model_a), str(model_b))
    paths = [resolve_model(ref, cfg) for ref in refs]
    versions = [model_version_of(ref, path) for ref, path in zip(refs, paths)]
    if versions[0] == versions[1]:
        raise DataError(f"--compare {model_a} {model_b}: both are {versions[0]}; compare two different model versions")
    answers = []
    for ref, path in zip(refs, paths):  # one model in memory at a time
        answers.append(sample_from(cfg, path, [p["prompt"] for p in prompts], 1, desc=f"[compare] {ref}"))
        gc.collect()
    sampling = sampling_settings(cfg)
    items, identical, empty = [], 0, 0
    for p, a, b in zip(prompts, *answers):
        if not a or not b:
            empty += 1
            continue
        if a[0] == b[0]:
            identical += 1
            continue
        pair = [a[0], b[0]]
        digest = hashlib.sha256(json.dumps([versions, p["prompt"], pair]).encode()).hexdigest()[:8]
        item = {"id": f"{p['id']}-{digest}", "prompt": p["prompt"]}
        if p.get("prompt_type"):
            item["prompt_type"] = p["prompt_type"]
        items.append(item | {"answers": pair, "models": list(refs), "model_versions": versions, "sampling": sampling})
    if not items:
        raise DataError(f"{prompts_file}: no prompt got two different answers from {model_a} and {model_b} "
                        f"({identical} identical, {empty} without an answer)")
    write_jsonl(out_queue, items)
    return {"queue": str(out_queue), "items": len(items), "identical": identical, "no_answer": empty,
            "model_versions": versions}


# ------------------------------------------------------------------------------ judgements
def check_judgement(item: dict, payload: dict) -> tuple[str, str]:
    """(winner, shown_first) of a submission: ``pair`` (the item's pair token), ``shown`` (the two
    answers in the order shown) and ``choice`` ("first", "second" or "tie")."""
    if payload.get("pair") != pair_token(item["model_versions"]):
        raise SubmissionError("pair", f"{payload.get('pair')!r} does not match the model versions of queue item "
                                      f"{item['id']!r} (the queue was rebuilt for other models?): reload the page", 409)
    shown = payload.get("shown")
    if not (isinstance(shown, list) and len(shown) == 2 and sorted(shown) == sorted(item["answers"])):
        raise SubmissionError("shown", f"must be the 2 answers of item {item['id']!r} in the order shown")
    choice = payload.get("choice")
    if choice not in CHOICES:
        raise SubmissionError("choice", f"{choice!r} is not one of {list(CHOICES)}")
    side = {item["answers"][0]: "a", item["answers"][1]: "b"}
    winner = "tie" if choice == "tie" else side[shown[0] if choice == "first" else shown[1]]
    return winner, side[shown[0]]


def judgement_record(item: dict, labeler: str, winner: str, shown_first: str) -> dict:
    """One line of judgements.jsonl."""
    rec = {"id": f"{item['id']}/{labeler}", "prompt": item["prompt"], "responses": list(item["answers"]),
           "model_versions": list(item["model_versions"]), "winner": winner, "shown_first": shown_first}
    if item.get("prompt_type"):
        rec["prompt_type"] = item["prompt_type"]
    return rec | {"labeled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "queue_item": item["id"],
                  "labeler": labeler}


def judge(queue: dict[str, dict], judgements: Path, payload: Any) -> tuple[dict, bool]:
    """Check a judgement and append it; (record, written). Raises SubmissionError, writing nothing."""
    item = _item_of(queue, payload)
    labeler = check_labeler(payload.get("labeler"))
    rec = judgement_record(item, labeler, *check_judgement(item, payload))
    return rec, append_once(judgements, rec)


def simulate(cfg: Config, queue_path: Path, judgements: Path, labelers: int | None = None) -> dict:
    """Judge the pair queue with the simulated labeler: gold reward + N(0, data.label_noise) per answer,
    a tie when the two scores are within data.tie_margin; labelers ``sim-0`` .. through ``judge``."""
    from tqdm.auto import tqdm

    queue = read_pair_queue(queue_path)
    require_gold(queue_path, queue, "judge")
    written = 0
    for j in range(labelers or cfg.label.labelers):
        name = f"sim-{j}"
        rng = Random(f"{cfg.common.seed}:{name}:ab")
        for item in tqdm(queue.values(), desc=f"[compare] {name}", unit="item"):
            shown = shown_answers(item, name, cfg.common.seed)
            s = [synth.gold_reward(item["prompt"], a) + rng.gauss(0.0, cfg.data.label_noise) for a in shown]
            choice = "tie" if abs(s[0] - s[1]) <= cfg.data.tie_margin else "first" if s[0] > s[1] else "second"
            written += judge(queue, judgements, {"queue_item": item["id"], "labeler": name, "shown": shown,
                                                 "choice": choice, "pair": pair_token(item["model_versions"])})[1]
    return {"items": len(queue), "written": written, "judgements": str(judgements)}


def report(queue_path: Path, judgements: Path, seed: int = 0) -> str:
    """Progress per labeler on the pair queue, and per pair of model versions A's win rate over B
    with its standard error and 95% interval (over items), ties, and inter-labeler agreement."""
    queue = read_pair_queue(queue_path) if Path(queue_path).exists() else {}
    recs = jd.read(judgements)
    done = defaultdict(set)
    for r in recs:
        done[r["labeler"]].add(r["queue_item"])
    lines = [f"A/B queue {queue_path}: {len(queue)} items" + ("" if queue else " (no queue file)"),
             f"judgements {judgements}: {len(recs)}"]
    for who in sorted(done):
        judged = len(done[who] & set(queue))
        lines.append(f"  {who}: {judged} of the queue judged, {len(queue) - judged} left")
    for a, b in jd.pairs(recs):
        s = jd.summary(recs, a, b, seed=seed)
        ag = "n/a (no item judged by two labelers)" if s["agreement"] is None else \
            f"{s['agreement']:.3f} over {s['agreement_pairs']} labeler pairs"
        lines += [f"{a} vs {b}: win rate of A {s['rate']:.3f} ± {s['se']:.3f} (standard error), 95% interval "
                  f"[{s['lo']:.3f}, {s['hi']:.3f}], n = {s['n']} items, {s['judgements']} judgements by "
                  f"{s['labelers']} labelers, {s['ties']} ties (counted half)",
                  f"  inter-labeler agreement (same verdict): {ag}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the A/B page
def make_app(queue_path: Path, judgements: Path, *, seed: int = 0, labeler: str = "labeler",
             control_tokens: tuple[str, ...] | None = None, max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI app of the A/B page: GET /, GET /api/next, POST /api/judge (refusals as label.make_app's)."""
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    # (no `from __future__ import annotations` in this module: FastAPI reads these annotations at runtime)
    from components.datasets.rules import check_queue_text

    queue = read_pair_queue(queue_path)
    check_queue_text(queue_path, control_tokens)

    def show(item: dict, name: str) -> dict:
        return {"id": item["id"], "prompt": item["prompt"], "prompt_type": item.get("prompt_type"),
                "answers": shown_answers(item, name, seed), "pair": pair_token(item["model_versions"])}

    def done_of(name: str) -> set[str]:
        return {r.get("queue_item") for r in read_records(judgements) if r.get("labeler") == name}

    app, progress = page_app("rlhf label --compare", AB_PAGE, queue, done_of, show, labeler)

    @app.post("/api/judge")
    async def submit_judgement(request: Request):
        payload = await read_body(request, max_body_bytes)
        rec, written = await run_in_threadpool(judge, queue, judgements, payload)
        return {"ok": True, "id": rec["id"], "duplicate": not written} | progress(rec["labeler"])[1]

    return app
