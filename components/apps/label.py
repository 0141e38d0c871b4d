"""The human-feedback loop, labeling side: sample K answers per prompt, rank them, append the rankings.

    rlhf sample --model models:/policy@champion --prompts FILE --k 4   -> outputs/label/queue.jsonl
    rlhf label [--labeler NAME]         a ranking page on http://127.0.0.1:8765 (one prompt, K answers)
    rlhf label --simulated [--labelers N]   the simulated labeler (synth.gold_reward) ranks the queue
    rlhf label --report                 progress per labeler and inter-labeler agreement
    rlhf label --commit                 the great-expectations gate, then `dvc add data`

A queue item is ``{"id", "prompt", "prompt_type"?, "answers": [K str], "model", "model_version",
"sampling"}``. A ranking becomes one record of ``comparisons.jsonl`` in the project's format
(``ranks``: 0 = best, ties share a rank, dense) with ``user_id`` = the prompt's author (so the
train/eval split keeps one item's rankings together), plus ``labeled_at``, ``model_version``,
``queue_item`` and ``labeler``. Flags (unsafe, nonsense) go to
``flags.jsonl`` beside it. Every write goes through ``append_once``: an exclusive lock on the file,
one ``write`` of one line, ``fsync``, and a dedupe on (queue_item, labeler), so two labelers at the
same time or a crash lose and duplicate nothing.
"""

import fcntl
import hashlib
import json
import os
import re
from collections import defaultdict
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from random import Random
from typing import Any

from components.apps.label_page import PAGE
from components.core.config import ROOT, Config, resolve
from components.core.data import FILES, K_MAX, K_MIN, dumps_record, iter_jsonl, write_jsonl
from components.core.errors import DataError
from components.core.models import load_model_dir
from components.core.pipeline import dvc
from components.core.registry import resolve_model
from components.core.sampling import sample_answers
from components.datasets import synth
from components.stages import validate

FLAGS = ("unsafe", "nonsense", "other")
LABELER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
LETTERS = "ABCDEFGHI"


def comparisons_path(cfg: Config) -> Path:
    return resolve(cfg.label.comparisons) if cfg.label.comparisons else cfg.data_dir / FILES["comparisons"]


def flags_path(comparisons: Path) -> Path:
    return Path(comparisons).with_name("flags.jsonl")


# ------------------------------------------------------------------------------ sampling
def read_prompts(path: str | Path) -> list[dict]:
    """Records of a prompts.jsonl file; each needs a unique non-empty ``id`` and ``prompt``."""
    out, seen = [], {}
    for lineno, rec in iter_jsonl(path):
        for field in ("id", "prompt"):
            if not isinstance(rec.get(field), str) or not rec[field].strip():
                raise DataError(f"{path}:{lineno}: field '{field}' must be a non-empty string (got {rec.get(field)!r})")
        if rec["id"] in seen:
            raise DataError(f"{path}:{lineno}: id {rec['id']!r} is also on line {seen[rec['id']]}")
        seen[rec["id"]] = lineno
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no prompts")
    return out


def model_version_of(ref: str, path: Path) -> str:
    """An immutable name of what was loaded: ``models:/<name>/<version>`` for a registry ref, else the folder."""
    if str(ref).startswith("models:/") and re.fullmatch(r"v\d+", path.name):  # tracking.resolve_model's cache
        return f"models:/{path.parent.name}/{path.name[1:]}"
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def sample_from(cfg: Config, path: Path, prompts: list[str], k: int, desc: str = "[sample]") -> list[list[str]]:
    """Up to ``k`` distinct answers per prompt from the model folder ``path`` at the ``label:`` sampling
    settings, seeded by common.seed (the model is loaded for this call and dropped after it)."""
    import torch

    lab = cfg.label
    model, tok = load_model_dir(path, allow_pickle=cfg.base_model.allow_pickle)
    if torch.cuda.is_available():
        model.cuda()
    torch.manual_seed(cfg.common.seed)
    return sample_answers(model, tok, prompts, k, system_prompt=cfg.common.system_prompt,
                          max_new_tokens=lab.max_new_tokens, temperature=lab.temperature, top_p=lab.top_p,
                          top_k=lab.top_k, batch_size=lab.batch_size, max_tries=lab.max_tries, desc=desc)


def sampling_settings(cfg: Config) -> dict:
    """What a queue item records of how its answers were drawn."""
    lab = cfg.label
    return {"temperature": lab.temperature, "top_p": lab.top_p, "top_k": lab.top_k,
            "max_new_tokens": lab.max_new_tokens, "seed": cfg.common.seed}


def sample(cfg: Config, model_ref: str, prompts_file: str | Path, k: int | None = None,
           out_queue: str | Path | None = None) -> dict:
    """K sampled answers per prompt -> the queue file (written atomically). Returns a summary.

    Answers that are empty or repeat another answer of the same prompt are drawn again, up to
    ``label.max_tries`` rounds; a prompt left with fewer than K distinct answers keeps the ones it
    has (at least 2) or is dropped, and the summary says how many.
    """
    lab = cfg.label
    k = k or lab.k
    if not K_MIN <= k <= K_MAX:
        raise DataError(f"k = {k}: the data format allows {K_MIN} <= K <= {K_MAX} answers per prompt")
    out_queue = resolve(out_queue or lab.queue)
    prompts = read_prompts(prompts_file)
    path = resolve_model(model_ref, cfg)
    version = model_version_of(model_ref, path)
    answers = sample_from(cfg, path, [p["prompt"] for p in prompts], k)
    sampling = sampling_settings(cfg)
    items, short, dropped = [], 0, 0
    for p, a in zip(prompts, answers):
        if len(a) < 2:
            dropped += 1
            continue
        short += len(a) < k
        digest = hashlib.sha256(json.dumps([version, p["prompt"], a]).encode()).hexdigest()[:8]
        item = {"id": f"{p['id']}-{digest}", "prompt": p["prompt"]}
        for field in ("prompt_type", "user_id", "split"):  # the author (the split follows it), a held-out mark
            if p.get(field):
                item[field] = p[field]
        items.append(item | {"answers": a, "model": str(model_ref), "model_version": version, "sampling": sampling})
    if not items:
        raise DataError(f"{prompts_file}: no prompt got 2 distinct non-empty answers in {lab.max_tries} rounds")
    write_jsonl(out_queue, items)
    return {"queue": str(out_queue), "items": len(items), "answers": sum(len(it["answers"]) for it in items),
            "fewer_than_k": short, "dropped": dropped, "model_version": version}


# ------------------------------------------------------------------------------ the queue
def queue_items(path: str | Path):
    """(where, item) of each line of a queue file: refuses an item without a non-empty string id and
    prompt, or with an id already used."""
    seen: set[str] = set()
    for lineno, item in iter_jsonl(path):
        where = f"{path}:{lineno}"
        for field in ("id", "prompt"):
            if not isinstance(item.get(field), str) or not item[field]:
                raise DataError(f"{where}: field '{field}' must be a non-empty string")
        if item["id"] in seen:
            raise DataError(f"{where}: id {item['id']!r} appears twice in the queue")
        seen.add(item["id"])
        yield where, item


def read_queue(path: str | Path) -> dict[str, dict]:
    """Queue id -> item, in file order; refuses an item the ranking page could not show."""
    queue: dict[str, dict] = {}
    for where, item in queue_items(path):
        a = item.get("answers")
        if not isinstance(a, list) or not all(isinstance(x, str) and x.strip() for x in a):
            raise DataError(f"{where} [{item['id']}]: field 'answers' must be a list of non-empty strings")
        if not K_MIN <= len(a) <= K_MAX or len(set(a)) != len(a):
            raise DataError(f"{where} [{item['id']}]: field 'answers' must hold {K_MIN}..{K_MAX} distinct answers")
        queue[item["id"]] = item
    return queue


def shown_order(item_id: str, labeler: str, k: int, seed: int) -> list[int]:
    """The order a labeler sees an item's answers in: a permutation seeded by (seed, labeler, item)."""
    order = list(range(k))
    Random(f"{seed}:{labeler}:{item_id}").shuffle(order)
    return order


def shown_answers(item: dict, labeler: str, seed: int) -> list[str]:
    """An item's answers in the order ``labeler`` sees them (``shown_order``)."""
    return [item["answers"][i] for i in shown_order(item["id"], labeler, len(item["answers"]), seed)]


# ------------------------------------------------------------------------------ submissions
class SubmissionError(ValueError):
    """A refused submission: ``field`` names what is wrong, ``status`` is the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.status = field, status


def check_labeler(name: Any) -> str:
    if not isinstance(name, str) or not LABELER.fullmatch(name):
        raise SubmissionError("labeler", f"{name!r} is not a labeler name (1-64 of A-Z a-z 0-9 _ . @ -, "
                                         "starting with a letter or digit)")
    return name


def _item_of(queue: dict[str, dict], payload: Any) -> dict:
    if not isinstance(payload, dict):
        raise SubmissionError("body", f"expected a JSON object, got {type(payload).__name__}", 400)
    item_id = payload.get("queue_item")
    if not isinstance(item_id, str):
        raise SubmissionError("queue_item", f"missing or not a string (got {item_id!r})")
    if item_id not in queue:
        raise SubmissionError("queue_item", f"unknown item {item_id!r}: not in the queue", 404)
    return queue[item_id]


def check_ranking(item: dict, payload: dict) -> list[int]:
    """The ranks of ``item["answers"]`` (queue order) from a submission that lists the answers as
    shown with their ranks; refuses anything but exactly the item's answers and dense ranks."""
    responses, ranks = payload.get("responses"), payload.get("ranks")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise SubmissionError("responses", "must be a list of strings (the answers in the order shown)")
    missing = [a for a in item["answers"] if a not in responses]
    extra = [r for r in responses if r not in item["answers"]]
    if missing or extra or len(responses) != len(item["answers"]):
        raise SubmissionError("responses", f"must be exactly the {len(item['answers'])} answers of item "
                                           f"{item['id']!r}: {len(missing)} missing, {len(extra)} unknown, "
                                           f"{len(responses)} given")
    if not isinstance(ranks, list) or not all(type(r) is int for r in ranks):
        raise SubmissionError("ranks", f"must be a list of integers (got {ranks!r})")
    if len(ranks) != len(responses):
        raise SubmissionError("ranks", f"has {len(ranks)} entries for {len(responses)} responses")
    if sorted(set(ranks)) != list(range(max(ranks) + 1)):
        raise SubmissionError("ranks", f"{ranks} must be dense: 0 = best, ties share a rank, no gaps")
    if len(set(ranks)) == 1:
        raise SubmissionError("ranks", f"{ranks} are all equal: rank at least one answer above another")
    by_text = dict(zip(responses, ranks))
    return [by_text[a] for a in item["answers"]]


def comparison_record(item: dict, labeler: str, ranks: list[int]) -> dict:
    """One line of comparisons.jsonl, in the project's format plus provenance."""
    rec = {"id": f"{item['id']}/{labeler}", "prompt": item["prompt"], "responses": list(item["answers"]),
           "ranks": ranks}
    for field in ("prompt_type", "split"):  # a held-out prompt's rankings stay held out
        if item.get(field):
            rec[field] = item[field]
    # user_id is the prompt's author, as for every other record: the train/eval split groups by it, so
    # several labelers' rankings of one item stay on one side. The labeler is in ``labeler``.
    rec |= {"user_id": item.get("user_id") or f"prompt-{item['id']}",
            "labeled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if item.get("model_version"):
        rec["model_version"] = item["model_version"]
    return rec | {"queue_item": item["id"], "labeler": labeler}


def submit(queue: dict[str, dict], comparisons: Path, payload: Any) -> tuple[dict, bool]:
    """Check a ranking and append it; (record, written). Raises SubmissionError, writing nothing."""
    item = _item_of(queue, payload)
    labeler = check_labeler(payload.get("labeler"))
    rec = comparison_record(item, labeler, check_ranking(item, payload))
    return rec, append_once(comparisons, rec)


def flag(queue: dict[str, dict], comparisons: Path, payload: Any) -> tuple[dict, bool]:
    """Flag an item instead of ranking it; the record goes to flags.jsonl beside the comparisons."""
    item = _item_of(queue, payload)
    labeler = check_labeler(payload.get("labeler"))
    reason, note = payload.get("flag"), payload.get("note", "")
    if reason not in FLAGS:
        raise SubmissionError("flag", f"{reason!r} is not one of {list(FLAGS)}")
    if not isinstance(note, str) or len(note) > 1000:
        raise SubmissionError("note", "must be a string of at most 1000 characters")
    rec = {"id": f"{item['id']}/{labeler}", "queue_item": item["id"], "labeler": labeler, "flag": reason,
           "note": note.strip(), "prompt": item["prompt"], "answers": item["answers"],
           "model_version": item.get("model_version", ""),
           "labeled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return rec, append_once(flags_path(comparisons), rec)


def _records(data: bytes):
    """JSON objects of a JSONL byte string; lines that are not (e.g. a torn tail) are skipped."""
    for raw in data.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def read_records(path: str | Path) -> list[dict]:
    """Every JSON object of a JSONL file, leniently (a missing file has none)."""
    path = Path(path)
    return list(_records(path.read_bytes())) if path.exists() else []


def append_once(path: str | Path, rec: dict, key: tuple[str, ...] = ("queue_item", "labeler")) -> bool:
    """Append ``rec`` as one line unless a record with the same ``key`` values is there; True if written.

    An exclusive ``flock`` on the file itself serialises writers (threads and processes alike), the
    line goes out in one ``write`` followed by ``fsync``. A torn last line (a crash in mid-write)
    is cut off before appending; a complete last record without its newline gets one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = dumps_record(rec).encode("utf-8")
    want = tuple(rec.get(k) for k in key)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
        if data and not data.endswith(b"\n"):
            head, _, tail = data.rpartition(b"\n")
            if next(_records(tail), None) is not None:
                line = b"\n" + line
            else:
                print(f"[label] {path}: dropped a torn last line ({len(tail)} bytes) left by an interrupted write",
                      flush=True)
                os.ftruncate(fd, len(head) + 1 if head else 0)
        if any(tuple(r.get(k) for k in key) == want for r in _records(data)):
            return False
        os.write(fd, line)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def done_by(comparisons: Path, labeler: str) -> set[str]:
    """Queue items this labeler ranked or flagged."""
    recs = read_records(comparisons) + read_records(flags_path(comparisons))
    return {r.get("queue_item") for r in recs if r.get("labeler") == labeler}


# ------------------------------------------------------------------------------ agreement
def agreement(records: list[dict]) -> dict:
    """Inter-labeler pairwise agreement.

    For every item ranked by two or more labelers, every pair of those labelers and every pair of
    answers both of them ordered (a tie by either leaves the pair out): the share ordered the same
    way. Records are grouped by ``queue_item`` (else by prompt), labelers by ``labeler`` (else
    ``user_id``), answers by text. Returns ``{"agreement": share or None, "pairs", "items"}``.
    """
    by_item: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for r in records:
        who = r.get("labeler") or r.get("user_id")
        by_item[r.get("queue_item") or r["prompt"]][who] = dict(zip(r["responses"], r["ranks"]))
    same = pairs = items = 0
    for labelers in by_item.values():
        if len(labelers) < 2:
            continue
        items += 1
        for a, b in combinations(sorted(labelers), 2):
            ra, rb = labelers[a], labelers[b]
            for x, y in combinations(sorted(set(ra) & set(rb)), 2):
                da, db = ra[x] - ra[y], rb[x] - rb[y]
                if da and db:
                    pairs += 1
                    same += (da > 0) == (db > 0)
    return {"agreement": same / pairs if pairs else None, "pairs": pairs, "items": items}


def report(queue_path: Path, comparisons: Path) -> str:
    """Progress per labeler on the queue, flags, and agreement, as text."""
    queue = read_queue(queue_path) if Path(queue_path).exists() else {}
    recs = [r for r in read_records(comparisons) if r.get("queue_item")]
    flags = read_records(flags_path(comparisons))
    ranked, flagged = defaultdict(set), defaultdict(set)
    for r in recs:
        ranked[r.get("labeler")].add(r["queue_item"])
    for r in flags:
        flagged[r.get("labeler")].add(r.get("queue_item"))
    lines = [f"queue {queue_path}: {len(queue)} items" + ("" if queue else " (no queue file)"),
             f"rankings {comparisons}: {len(recs)} from the ranking loop; flags: {len(flags)}"]
    for who in sorted(set(ranked) | set(flagged), key=str):
        done = (ranked[who] | flagged[who]) & set(queue)
        lines.append(f"  {who}: {len(ranked[who])} ranked, {len(flagged[who])} flagged, "
                     f"{len(queue) - len(done)} of the queue left")
    covered = {i for s in ranked.values() for i in s} & set(queue)
    lines.append(f"items ranked by at least one labeler: {len(covered)} / {len(queue)}")
    ag = agreement(recs)
    share = "n/a (no item ranked by two labelers)" if ag["agreement"] is None else f"{ag['agreement']:.3f}"
    lines.append(f"inter-labeler agreement: {share} over {ag['pairs']} answer pairs on {ag['items']} items "
                 f"(ties left out)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ simulated labeler
def require_gold(queue_path: Path, queue: dict[str, dict], task: str) -> None:
    """Refuse a queue with a prompt the built-in generator did not write: the simulated labeler has no
    gold reward for it (``task``: what the labeler should do on the page instead)."""
    for item in queue.values():
        if synth.parse_task(item["prompt"]) is None:
            raise DataError(f"{queue_path} [{item['id']}]: the prompt was not written by the built-in generator, "
                            f"so the simulated labeler has no gold reward for it; {task} it on the page instead")


def simulate(cfg: Config, queue_path: Path, comparisons: Path, labelers: int | None = None) -> dict:
    """Rank the queue with the simulated labeler (gold reward + N(0, data.label_noise), ties within
    data.tie_margin), labelers ``sim-0`` .. ``sim-<N-1>``, each seeded, through ``submit``."""
    from tqdm.auto import tqdm

    queue = read_queue(queue_path)
    require_gold(queue_path, queue, "rank")
    written = 0
    for j in range(labelers or cfg.label.labelers):
        name = f"sim-{j}"
        rng = Random(f"{cfg.common.seed}:{name}")
        for item in tqdm(queue.values(), desc=f"[label] {name}", unit="item"):
            shown = shown_answers(item, name, cfg.common.seed)
            ranks = synth.rank_responses(item["prompt"], shown, rng, cfg.data.label_noise, cfg.data.tie_margin)
            written += submit(queue, comparisons, {"queue_item": item["id"], "labeler": name,
                                                   "responses": shown, "ranks": ranks})[1]
    return {"items": len(queue), "written": written, "comparisons": str(comparisons)}


# ------------------------------------------------------------------------------ commit
def commit(cfg: Config, data_dir: Path | None = None) -> str:
    """The data gate over the data folder, then ``dvc add``; on a failed gate nothing is added
    (validate.ValidationFailed propagates). Returns what to commit."""
    data_dir = Path(data_dir or cfg.data_dir).resolve()
    result = validate.run(cfg, data_dir=data_dir)
    from components.datasets import rules

    rules.check_judgements(data_dir, cfg.out_dir("label") / "judgements_report", rules.control_tokens_for(cfg, "label"))
    rel = os.path.relpath(data_dir, ROOT)
    done = dvc("add", rel, check=False)
    if done.returncode != 0:
        raise DataError(f"dvc add {rel} failed:\n{done.stderr.strip() or done.stdout.strip()}")
    return (f"{rel} passed the gate ({result.get('records_comparisons', 0)} comparisons) and is tracked by "
            f"{rel}.dvc. Commit the new data version:\n  git add {rel}.dvc && git commit -m 'data: new rankings'"
            "\n  dvc push   # if a DVC remote is configured")


# ------------------------------------------------------------------------------ the ranking page
# The largest request body the ranking server reads (bytes): a submission of K = 9 answers at the gate's
# 4000 characters each is well under it; a bigger body is refused (413) without being read into memory.
MAX_BODY_BYTES = 1 << 20


def make_app(queue_path: Path, comparisons: Path, *, seed: int = 0, labeler: str = "labeler",
             control_tokens: tuple[str, ...] | None = None, max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI app of the ranking page: GET /, GET /api/next, POST /api/submit, POST /api/flag.

    A queue whose text holds a control token of the tokenizer (``control_tokens``, default the packaged
    SmolLM2's; ``rlhf label`` passes the configured one's) is refused before anything is served. A POST
    body over ``max_body_bytes`` gets 413 and nothing written; it is read chunk by chunk and dropped as
    soon as it passes the limit, so a client cannot make the server hold more than that."""
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    # (no `from __future__ import annotations` in this module: FastAPI reads these annotations at runtime)
    from components.datasets.rules import check_queue_text

    queue = read_queue(queue_path)
    check_queue_text(queue_path, control_tokens)

    def show(item: dict, name: str) -> dict:
        return {"id": item["id"], "prompt": item["prompt"], "prompt_type": item.get("prompt_type"),
                "answers": shown_answers(item, name, seed)}

    app, progress = page_app("rlhf label", PAGE, queue, lambda name: done_by(comparisons, name), show, labeler)

    @app.post("/api/submit")
    async def submit_ranking(request: Request):
        payload = await read_body(request, max_body_bytes)
        rec, written = await run_in_threadpool(submit, queue, comparisons, payload)
        return {"ok": True, "id": rec["id"], "duplicate": not written} | progress(rec["labeler"])[1]

    @app.post("/api/flag")
    async def flag_item(request: Request):
        payload = await read_body(request, max_body_bytes)
        rec, written = await run_in_threadpool(flag, queue, comparisons, payload)
        return {"ok": True, "id": rec["id"], "duplicate": not written} | progress(rec["labeler"])[1]

    return app


def page_app(title: str, html: str, queue: dict[str, dict], done_of, show, labeler: str):
    """What the ranking page and the A/B page share: a refusal (SubmissionError) as JSON naming the
    field, GET / (``html`` with the default labeler), GET /api/next (the labeler's first item neither
    done, ``done_of(name)``, nor skipped, as ``show(item, name)`` presents it, with the progress).
    Returns (app, progress) where ``progress(name)`` is (items done, the progress dict)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse

    default = check_labeler(labeler)
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(SubmissionError)
    async def refused(request, e: SubmissionError):
        return JSONResponse({"error": str(e), "field": e.field}, status_code=e.status)

    def progress(name: str) -> tuple[set[str], dict]:
        done = done_of(name) & set(queue)
        return done, {"labeler": name, "done": len(done), "remaining": len(queue) - len(done), "total": len(queue)}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return html.replace("__LABELER__", json.dumps(default))

    @app.get("/api/next")
    def next_item(labeler: str = default, skip: str = ""):
        name = check_labeler(labeler)
        done, prog = progress(name)
        todo = [i for i in queue if i not in done]
        skipped = set(skip.split(",")) if skip else set()
        item = next((queue[i] for i in todo if i not in skipped), None)
        if item is None:
            return prog | {"item": None, "skipped": len(todo)}
        return prog | {"item": show(item, name)}

    return app, progress


async def read_body(request, max_body_bytes: int) -> Any:
    """The JSON body of a POST, read chunk by chunk: 413 as soon as it passes ``max_body_bytes``
    (a declared Content-Length over it is refused unread), 400 when it is not JSON."""
    too_big = SubmissionError("body", f"larger than {max_body_bytes} bytes", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_body_bytes:
            raise too_big
    try:
        return json.loads(bytes(data))
    except ValueError as e:
        raise SubmissionError("body", f"not valid JSON ({e})", 400) from None


def serve(app, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
