"""The ranking server under load: `rlhf label` (the real command, one process, 127.0.0.1) and several
concurrent labelers submitting and flagging, each judgement sent more than once (a retry, a double
click), interleaved with malformed and oversized bodies.

Checked at the end: every judgement is in comparisons.jsonl / flags.jsonl exactly once, every bad
request was refused with a 4xx naming the field and wrote nothing, and the server's memory stayed
bounded (oversized bodies are refused at the body-size limit). Prints one JSON object: request counts
by kind, unexpected answers, p50 / p99 latency per kind, the server's RSS before and after.

    .venv/bin/python benchmarks/label_load.py --items 200 --labelers 16 --copies 2   # figures in README.md

tests/test_label_server.py runs a small load (fewer items) through ``run``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.core import procs  # noqa: E402
from components.core.data import read_jsonl, write_jsonl  # noqa: E402

K = 4


def make_queue(path: Path, n_items: int) -> list[dict]:
    items = [{"id": f"q{i:04d}", "prompt": f"Question {i}: which answer is best?", "prompt_type": "open",
              "answers": [f"Answer {j} to question {i}." for j in range(K)], "model": "models:/policy@champion",
              "model_version": "models:/policy/1", "sampling": {"temperature": 1.0}} for i in range(n_items)]
    write_jsonl(path, items)
    return items


def _request(port: int, path: str, body: bytes, timeout: float = 60.0) -> tuple[int, dict, float]:
    """POST ``body``; (status, JSON answer, seconds). A server that answers before reading a whole
    oversized body may close the connection under the client's feet: the answer is still read."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload (413): the status line is already there
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data or b"{}"), time.perf_counter() - t0
    finally:
        conn.close()


def ranking(item: dict, labeler: str, rng: random.Random) -> dict:
    shown = list(item["answers"])
    rng.shuffle(shown)
    ranks = list(range(K))
    rng.shuffle(ranks)
    return {"queue_item": item["id"], "labeler": labeler, "responses": shown, "ranks": ranks}


def bad_bodies(item: dict, rng: random.Random, max_body: int) -> list[tuple[str, str, bytes, int, str]]:
    """(kind, path, body, expected status, field) of malformed and oversized requests."""
    good = ranking(item, "mallory", rng)
    return [
        ("malformed", "/api/submit", b"{not json", 400, "body"),
        ("malformed", "/api/submit", b"\xff\xfe", 400, "body"),
        ("malformed", "/api/submit", json.dumps(good | {"ranks": [0, 0, 0, 0]}).encode(), 422, "ranks"),
        ("malformed", "/api/submit", json.dumps(good | {"queue_item": "nope"}).encode(), 404, "queue_item"),
        ("malformed", "/api/submit", json.dumps(good | {"labeler": "a b"}).encode(), 422, "labeler"),
        ("malformed", "/api/flag", json.dumps({"queue_item": item["id"], "labeler": "mallory", "flag": "boring"}).encode(),
         422, "flag"),
        ("oversized", "/api/submit", json.dumps(good | {"note": "x" * (max_body + 1)}).encode(), 413, "body"),
    ]


def run(port: int, server_pid: int, items: list[dict], comparisons: Path, *, labelers: int, copies: int = 2,
        flag_every: int = 5, bad_every: int = 10, max_body: int, seed: int = 0, workers: int | None = None) -> dict:
    """The load against the server (process ``server_pid``) on ``port``; checks the files afterwards.
    Returns the figures."""
    rng = random.Random(seed)
    jobs = []  # (kind, path, body, expected status, field, judgement key or None)
    for j in range(labelers):
        name = f"lab{j:02d}"
        for i, item in enumerate(items):
            if (i + j) % flag_every == 0:
                body = json.dumps({"queue_item": item["id"], "labeler": name, "flag": "nonsense", "note": "load"})
                jobs += [("flag", "/api/flag", body.encode(), 200, None, ("flag", item["id"], name))] * copies
            else:
                body = json.dumps(ranking(item, name, rng)).encode()
                jobs += [("submit", "/api/submit", body, 200, None, ("rank", item["id"], name))] * copies
            if (i * labelers + j) % bad_every == 0:
                jobs += [(*b, None) for b in bad_bodies(item, rng, max_body)]
    rng.shuffle(jobs)
    results: list[tuple[str, int, dict, float, tuple]] = []
    lock = threading.Lock()

    def one(job):
        kind, path, body, want, field, key = job
        try:
            status, answer, seconds = _request(port, path, body)
        except OSError as e:
            status, answer, seconds = -1, {"error": repr(e)}, float("nan")
        with lock:
            results.append((kind, status, answer, seconds, job))

    import psutil

    server = psutil.Process(server_pid)
    rss_before = server.memory_info().rss
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers or labelers) as pool:
        list(pool.map(one, jobs))
    wall = time.perf_counter() - t0
    rss_after = server.memory_info().rss

    unexpected = []
    for kind, status, answer, _, (_, _, _, want, field, _) in results:
        if status != want or (field is not None and (answer.get("field") != field or not answer.get("error"))):
            unexpected.append({"kind": kind, "status": status, "want": want, "answer": answer})
    ranked = [(r["queue_item"], r["labeler"]) for r in read_jsonl(comparisons)] if comparisons.exists() else []
    flags_file = comparisons.with_name("flags.jsonl")
    flagged = [(r["queue_item"], r["labeler"]) for r in read_jsonl(flags_file)] if flags_file.exists() else []
    want_ranked = sorted({(k[1], k[2]) for *_, k in jobs if k and k[0] == "rank"})
    want_flagged = sorted({(k[1], k[2]) for *_, k in jobs if k and k[0] == "flag"})
    first = {}
    for kind, status, answer, _, job in results:
        key = job[5]
        if key and status == 200:
            first.setdefault(key, 0)
            first[key] += not answer.get("duplicate")

    def pct(kind, q):
        xs = sorted(s for k, _, _, s, _ in results if k == kind and s == s)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1) if xs else None

    kinds = sorted({r[0] for r in results})
    return {
        "requests": len(results), "wall_seconds": round(wall, 2), "requests_per_second": round(len(results) / wall, 1),
        "labelers": labelers, "items": len(items), "copies_per_judgement": copies,
        "by_kind": {k: sum(r[0] == k for r in results) for k in kinds},
        "status_by_kind": {k: dict(sorted(Counter(r[1] for r in results if r[0] == k).items())) for k in kinds},
        "unexpected": unexpected[:20], "n_unexpected": len(unexpected),
        "latency_ms": {k: {"p50": pct(k, 0.50), "p99": pct(k, 0.99)} for k in kinds},
        "ranked_lines": len(ranked), "ranked_expected": len(want_ranked),
        "ranked_exactly_once": sorted(ranked) == want_ranked,
        "flagged_lines": len(flagged), "flagged_expected": len(want_flagged),
        "flagged_exactly_once": sorted(flagged) == want_flagged,
        "written_once_per_judgement": all(v == 1 for v in first.values()) and len(first) == len(want_ranked) + len(want_flagged),
        "server_rss_mb": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1)},
    }


def start_server(work: Path, n_items: int) -> tuple[object, int, list[dict], Path, Path]:
    """`rlhf label` on a fresh queue of ``n_items`` in ``work``; (process, port, items, comparisons, log)."""
    items = make_queue(work / "queue.jsonl", n_items)
    out = work / "data" / "comparisons.jsonl"
    port = procs.free_port()
    log = work / "label.log"
    proc = procs.start([sys.executable, "-m", "components.apps.cli", "label", "--queue", str(work / "queue.jsonl"),
                        "--out", str(out), "--port", str(port)],
                       env=procs.child_env({"PYTHONPATH": str(ROOT)}), log=log, cwd=ROOT)
    procs.wait_healthy(f"http://127.0.0.1:{port}/api/next?labeler=probe", proc, timeout=120, what="rlhf label", log=log)
    return proc, port, items, out, log


def main() -> int:
    from components.apps.label import MAX_BODY_BYTES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--labelers", type=int, default=16)
    ap.add_argument("--copies", type=int, default=2, help="times each judgement is sent (retries)")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-label-load-") as d:
        proc, port, items, out, _ = start_server(Path(d), args.items)
        with procs.stopped_on_exit(proc):
            figures = run(port, proc.pid, items, out, labelers=args.labelers, copies=args.copies,
                          max_body=MAX_BODY_BYTES)
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    ok = figures["n_unexpected"] == 0 and figures["ranked_exactly_once"] and figures["flagged_exactly_once"]
    return 0 if ok and figures["written_once_per_judgement"] else 1


if __name__ == "__main__":
    sys.exit(main())
