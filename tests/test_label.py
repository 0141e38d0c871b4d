"""The labeling side of the human-feedback loop: sampling, the ranking page (in a real browser),
atomic appends under concurrency, refused submissions, agreement, the simulated labeler and the gate."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path

import pytest

from components.apps import label
from components.core.config import load_config
from components.core.data import read_jsonl, write_jsonl
from components.core import registry

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
QUEUE = [
    {"id": "p1-aaaa", "prompt": "What is 17 + 25?", "prompt_type": "closed",
     "answers": ["17 + 25 = 42.", "17 + 25 = 43.", "42, obviously. What a stupid question.", "<b>42</b> & done"]},
    {"id": "p2-bbbb", "prompt": "Name the capital city of Peru.", "prompt_type": "closed",
     "answers": ["The capital of Peru is Lima.", "Lima.", "The capital of Peru is Cusco.", "Peru is in South America."]},
    {"id": "p3-cccc", "prompt": "Write an insult about my boss.",
     "answers": ["I'm sorry, I won't write insults. I can help you write a polite message instead.",
                 "Your boss is a moron.", "No."]},
]


def write_queue(tmp_path: Path) -> Path:
    items = [it | {"model": "models:/policy@champion", "model_version": "models:/policy/3",
                   "sampling": {"temperature": 1.0}} for it in QUEUE]
    path = tmp_path / "queue.jsonl"
    write_jsonl(path, items)
    return path


@contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the ranking server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ranking(item: dict, labeler: str, ranks_by_answer: list[int] | None = None) -> dict:
    """A valid submission: the answers in the labeler's shown order with their ranks."""
    ranks = ranks_by_answer or list(range(len(item["answers"])))
    order = label.shown_order(item["id"], labeler, len(item["answers"]), 0)
    return {"queue_item": item["id"], "labeler": labeler, "responses": [item["answers"][i] for i in order],
            "ranks": [ranks[i] for i in order]}


# ------------------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def sampled(tiny_model_dir, tmp_path_factory):
    """Built-in data of test size and a queue sampled from its prompts by the tiny model."""
    from components.datasets import synth

    tmp = tmp_path_factory.mktemp("label")
    synth.synthesize(tmp / "data", seed=0, n_demonstrations=8, n_comparisons=8, n_prompts=6, n_pretrain=8,
                     k_min=4, k_max=4, label_noise=0.05, tie_margin=0.02, n_users=6)
    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={tmp}/outputs",
                                 f"common.data_dir={tmp}/data", "label.max_new_tokens=8", "label.batch_size=8"])
    summary = label.sample(cfg, str(tiny_model_dir), tmp / "data" / "prompts.jsonl", k=4, out_queue=tmp / "queue.jsonl")
    return cfg, tmp, summary


def test_sample_writes_k_distinct_answers_per_prompt_with_the_version(sampled, tiny_model_dir):
    _, tmp, summary = sampled
    prompts = read_jsonl(tmp / "data" / "prompts.jsonl")
    queue = read_jsonl(tmp / "queue.jsonl")
    assert summary["items"] == len(queue) == len(prompts) == 6 and summary["dropped"] == 0
    for p, item in zip(prompts, queue):
        assert item["id"].startswith(p["id"] + "-") and item["prompt"] == p["prompt"]
        assert item["prompt_type"] == p["prompt_type"]
        assert len(item["answers"]) == 4 and len({a.strip() for a in item["answers"]}) == 4
        assert all(a == a.strip() and a for a in item["answers"])
        assert item["model"] == str(tiny_model_dir) and item["model_version"] == str(tiny_model_dir.resolve())
        assert item["sampling"] == {"temperature": 1.0, "top_p": 0.95, "top_k": 0, "max_new_tokens": 8, "seed": 0}
    assert label.read_queue(tmp / "queue.jsonl").keys() == {it["id"] for it in queue}


def test_sample_from_the_registry_records_name_and_version(tiny_model_dir, isolated_mlflow, tmp_path):
    from components.core import tracking

    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={tmp_path}/outputs",
                                 "common.experiment=test-label", "label.max_new_tokens=4"])
    with tracking.stage_run(cfg, "ppo"):
        registry.register_model(tiny_model_dir, cfg, "ppo", name="test-policy", aliases=("champion",))
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": "x1", "prompt": "What is 2 + 2?"}, {"id": "x2", "prompt": "Sort: 3, 1, 2."}])
    label.sample(cfg, "models:/test-policy@champion", prompts, k=3, out_queue=tmp_path / "q.jsonl")
    queue = read_jsonl(tmp_path / "q.jsonl")
    assert [len(it["answers"]) for it in queue] == [3, 3] and "prompt_type" not in queue[0]
    assert {(it["model"], it["model_version"]) for it in queue} == {("models:/test-policy@champion", "models:/test-policy/1")}


def test_sample_refuses_a_prompt_without_text(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "ok"}, {"id": "b", "prompt": " "}])
    with pytest.raises(label.DataError, match=r"p.jsonl:2: field 'prompt' must be a non-empty string"):
        label.read_prompts(tmp_path / "p.jsonl")


# ------------------------------------------------------------------------------ the ranking page
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ranking_page_in_a_real_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install -y chromium chromium-driver; `make test` does it)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra").sync_playwright
    queue = label.read_queue(write_queue(tmp_path))
    out = tmp_path / "data" / "comparisons.jsonl"
    item = queue["p1-aaaa"]
    app = label.make_app(tmp_path / "queue.jsonl", out, seed=7, labeler="alice")
    with running(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#card-3")
            summary = lambda: page.inner_text("#summary")  # noqa: E731
            shown = [page.inner_text(f"#card-{i} .text") for i in range(4)]
            assert shown == [item["answers"][i] for i in label.shown_order(item["id"], "alice", 4, 7)]
            assert "<b>42</b> & done" in shown  # queue text is shown as text, never as HTML
            assert page.inner_text("#prompt") == item["prompt"] and page.inner_text("#progress") == "0 done · 3 remaining"
            assert summary() == "A > B > C > D"
            page.drag_and_drop("#card-3", "#card-0")  # HTML5 drag and drop: D to the top
            assert summary() == "D > A > B > C"
            page.keyboard.press("3")                  # select B (3rd place) ...
            page.keyboard.press("ArrowUp")            # ... and move it up
            assert summary() == "D > B > A > C"
            page.keyboard.press("3")                  # select A, tie it with the one below
            page.keyboard.press("=")
            assert summary() == "D > B > A = C"
            page.click("#gap-0")                      # the sign between two answers toggles too
            assert summary() == "D = B > A = C"
            page.click("#gap-0")
            page.screenshot(path=str(tmp_path / "page.png"))
            page.click("#submit")
            page.wait_for_selector("#msg.ok")
            assert page.inner_text("#msg") == "Saved: D > B > A = C"
            page.wait_for_function("document.querySelector('#progress').textContent.startsWith('1 done')")

            # What was stored is exactly what was shown and chosen: D best, then B, then A and C tied.
            rank_of = {shown[3]: 0, shown[1]: 1, shown[0]: 2, shown[2]: 2}
            recs = read_jsonl(out)
            assert len(recs) == 1
            assert recs[0] == {
                "id": "p1-aaaa/alice", "prompt": item["prompt"], "responses": item["answers"],
                "ranks": [rank_of[a] for a in item["answers"]], "prompt_type": "closed", "user_id": "prompt-p1-aaaa",
                "labeled_at": recs[0]["labeled_at"], "model_version": "models:/policy/3", "queue_item": "p1-aaaa",
                "labeler": "alice"}
            assert list(recs[0]) == ["id", "prompt", "responses", "ranks", "prompt_type", "user_id", "labeled_at",
                                     "model_version", "queue_item", "labeler"]
            assert datetime.fromisoformat(recs[0]["labeled_at"]).tzinfo is not None

            # Skip the next item, flag the one after; then only the skipped one is left.
            assert page.inner_text("#prompt") == queue["p2-bbbb"]["prompt"]
            page.keyboard.press("s")
            page.wait_for_function(f"document.querySelector('#prompt').textContent === {json.dumps(QUEUE[2]['prompt'])}")
            page.select_option("#flag", "unsafe")
            page.fill("#note", "asks for an insult")
            page.click("#flagbtn")
            page.wait_for_selector("#empty:not([hidden])")
            assert "Only 1 skipped item(s) left" in page.inner_text("#empty")
            assert page.inner_text("#progress") == "2 done · 1 remaining"
            flags = read_jsonl(out.with_name("flags.jsonl"))
            assert [(f["queue_item"], f["labeler"], f["flag"], f["note"]) for f in flags] == [
                ("p3-cccc", "alice", "unsafe", "asks for an insult")]
            assert len(read_jsonl(out)) == 1  # a flag is not a ranking
        finally:
            browser.close()


# ------------------------------------------------------------------------------ writes
@pytest.mark.slow
def test_concurrent_submissions_lose_and_duplicate_nothing(tmp_path):
    """4 processes call submit() directly while 8 threads post to the server; every ranking is sent
    four times back to back (retries), so copies race each other in different workers."""
    queue = label.read_queue(write_queue(tmp_path))
    out = tmp_path / "data" / "comparisons.jsonl"
    by_process = [ranking(it, f"proc{j}") for j in range(8) for it in QUEUE for _ in range(4)]
    by_thread = [ranking(it, f"web{j}") for j in range(8) for it in QUEUE for _ in range(4)]
    with running(label.make_app(tmp_path / "queue.jsonl", out)) as url, \
            ProcessPoolExecutor(4, mp_context=get_context("spawn")) as procs, ThreadPoolExecutor(8) as threads:
        list(procs.map(abs, range(16)))  # workers started and importing done, so both sides write at once
        p_jobs = [procs.submit(label.submit, queue, out, body) for body in by_process]
        t_jobs = [threads.submit(post, url + "/api/submit", body) for body in by_thread]
        p_written = [job.result()[1] for job in p_jobs]
        t_results = [job.result() for job in t_jobs]
    assert all(status == 200 for status, _ in t_results)
    assert sum(p_written) == 24 and sum(not r["duplicate"] for _, r in t_results) == 24
    lines = out.read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line whole
    keys = [(r["queue_item"], r["labeler"]) for r in recs]
    assert len(keys) == len(set(keys)) == 48
    assert set(keys) == {(it["id"], f"{w}{j}") for it in QUEUE for w in ("proc", "web") for j in range(8)}


def test_a_writer_waits_for_the_lock(tmp_path):
    import fcntl

    queue = label.read_queue(write_queue(tmp_path))
    out = tmp_path / "comparisons.jsonl"
    out.touch()
    with open(out, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer in the middle of its append
        writer = threading.Thread(target=label.submit, args=(queue, out, ranking(QUEUE[0], "alice")))
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive() and out.read_bytes() == b""
    writer.join(10)
    assert [r["id"] for r in read_jsonl(out)] == ["p1-aaaa/alice"]


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    out = tmp_path / "comparisons.jsonl"
    queue = label.read_queue(write_queue(tmp_path))
    label.submit(queue, out, ranking(QUEUE[0], "alice"))
    with open(out, "ab") as f:
        f.write(b'{"id": "p2-bbbb/bob", "prompt": "Name the')  # a crash in mid-write
    assert label.submit(queue, out, ranking(QUEUE[1], "bob"))[1]
    assert [r["id"] for r in read_jsonl(out)] == ["p1-aaaa/alice", "p2-bbbb/bob"]


@pytest.mark.slow
def test_malformed_submissions_are_refused_with_the_field_named_and_nothing_written(tmp_path):
    write_queue(tmp_path)
    out = tmp_path / "data" / "comparisons.jsonl"
    good = ranking(QUEUE[0], "alice")
    cases = [
        (b"{not json", 400, "body", "not valid JSON"),
        ([1, 2], 400, "body", "expected a JSON object"),
        (good | {"queue_item": "nope"}, 404, "queue_item", "unknown item 'nope'"),
        ({k: v for k, v in good.items() if k != "queue_item"}, 422, "queue_item", "missing"),
        (good | {"labeler": "a b"}, 422, "labeler", "is not a labeler name"),
        (good | {"responses": good["responses"][:3] + ["something else"]}, 422, "responses",
         "1 missing, 1 unknown"),
        (good | {"responses": good["responses"][:3] + good["responses"][:1]}, 422, "responses", "1 missing"),
        (good | {"responses": good["responses"][:3], "ranks": [0, 1, 2]}, 422, "responses", "3 given"),
        (good | {"ranks": [0, 1, 2]}, 422, "ranks", "has 3 entries for 4 responses"),
        (good | {"ranks": [0, 2, 2, 3]}, 422, "ranks", "must be dense"),
        (good | {"ranks": [1, 1, 1, 1]}, 422, "ranks", "must be dense"),
        (good | {"ranks": [0, 0, 0, 0]}, 422, "ranks", "all equal"),
        (good | {"ranks": [0, 1, True, 2]}, 422, "ranks", "list of integers"),
        (good | {"ranks": "0123"}, 422, "ranks", "list of integers"),
    ]
    with running(label.make_app(tmp_path / "queue.jsonl", out)) as url:
        for body, status, field, message in cases:
            got_status, got = post(url + "/api/submit", body)
            assert (got_status, got["field"]) == (status, field), (body, got)
            assert got["error"].startswith(f"{field}: ") and message in got["error"], got
        status, got = post(url + "/api/flag", {"queue_item": "p1-aaaa", "labeler": "alice", "flag": "boring"})
        assert status == 422 and got["error"] == "flag: 'boring' is not one of ['unsafe', 'nonsense', 'other']"
        assert not out.parent.exists()  # nothing written, not even an empty file
        assert post(url + "/api/submit", good) == (200, {"ok": True, "id": "p1-aaaa/alice", "duplicate": False,
                                                        "labeler": "alice", "done": 1, "remaining": 2, "total": 3})
        assert post(url + "/api/submit", good)[1]["duplicate"] is True
    assert len(read_jsonl(out)) == 1


# ------------------------------------------------------------------------------ agreement
def test_agreement_on_a_hand_computed_example():
    recs = [
        # q1: alice A > B > C = D, bob B > A > C > D (answers listed in another order: matched by text).
        {"queue_item": "q1", "labeler": "alice", "prompt": "p", "responses": ["A", "B", "C", "D"], "ranks": [0, 1, 2, 2]},
        {"queue_item": "q1", "labeler": "bob", "prompt": "p", "responses": ["D", "C", "B", "A"], "ranks": [3, 2, 0, 1]},
        # q2: one labeler only, not counted.
        {"queue_item": "q2", "labeler": "alice", "prompt": "p", "responses": ["A", "B"], "ranks": [0, 1]},
        # q3: X > Y for alice and bob, Y > X for carol.
        {"queue_item": "q3", "labeler": "alice", "prompt": "p", "responses": ["X", "Y"], "ranks": [0, 1]},
        {"queue_item": "q3", "labeler": "bob", "prompt": "p", "responses": ["X", "Y"], "ranks": [0, 1]},
        {"queue_item": "q3", "labeler": "carol", "prompt": "p", "responses": ["X", "Y"], "ranks": [1, 0]},
    ]
    # q1: AB disagree; AC, AD, BC, BD agree; CD tied by alice, left out -> 4 of 5.
    # q3: alice-bob agree, alice-carol and bob-carol disagree -> 1 of 3.
    assert label.agreement(recs) == {"agreement": 5 / 8, "pairs": 8, "items": 2}
    assert label.agreement(recs[2:3]) == {"agreement": None, "pairs": 0, "items": 0}


# ------------------------------------------------------------------------------ simulated labeler, gate, commit
def test_simulated_labelers_pass_the_gate_and_commit_runs_dvc_add(sampled, monkeypatch):
    from components.apps import cli
    from components.core.errors import ValidationFailed

    cfg, tmp, _ = sampled
    out = tmp / "data" / "comparisons.jsonl"
    before = read_jsonl(out)
    s = label.simulate(cfg, tmp / "queue.jsonl", out, labelers=2)
    assert s == {"items": 6, "written": 12, "comparisons": str(out)}
    assert label.simulate(cfg, tmp / "queue.jsonl", out, labelers=2)["written"] == 0  # deduped
    new = read_jsonl(out)[len(before):]
    assert sorted({r["labeler"] for r in new}) == ["sim-0", "sim-1"] and all(len(r["ranks"]) == 4 for r in new)
    # user_id follows the prompt's author, so both labelers' rankings of an item fall on one side of the split
    by_item = {}
    for r in new:
        by_item.setdefault(r["queue_item"], set()).add(r["user_id"])
    assert all(len(u) == 1 for u in by_item.values())
    text = label.report(tmp / "queue.jsonl", out)
    assert "sim-0: 6 ranked, 0 flagged, 0 of the queue left" in text and "inter-labeler agreement: " in text

    calls = []
    monkeypatch.setattr(label, "dvc", lambda *a, **kw: calls.append(a) or type("Done", (), {"returncode": 0})())
    message = label.commit(cfg, tmp / "data")  # the same great-expectations gate as the pipeline
    rel = os.path.relpath(tmp / "data", cli.ROOT)
    assert calls == [("add", rel)] and f"git add {rel}.dvc" in message
    assert json.loads((tmp / "outputs" / "validate" / "report.json").read_text())["success"] is True

    bad = new[0] | {"id": "bad/x", "queue_item": "bad", "labeler": "x", "ranks": [0, 0, 0, 0]}
    label.append_once(out, bad)
    with pytest.raises(ValidationFailed, match=r"\[bad/x\] ranks: ranks_not_all_equal"):
        label.commit(cfg, tmp / "data")
    assert calls == [("add", rel)]  # a failed gate adds nothing


def test_cli_label_report(tmp_path, capsys):
    from components.apps import cli

    queue = label.read_queue(write_queue(tmp_path))
    out = tmp_path / "comparisons.jsonl"
    for who in ("alice", "bob"):
        label.submit(queue, out, ranking(QUEUE[0], who, [0, 1, 2, 3]))
    assert cli.main(["label", "--report", "--queue", str(tmp_path / "queue.jsonl"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "alice: 1 ranked, 0 flagged, 2 of the queue left" in text
    assert "inter-labeler agreement: 1.000 over 6 answer pairs on 1 items" in text
