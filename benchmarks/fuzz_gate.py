"""Fuzzing the data gate with hypothesis: generated data folders (records of random shapes and types, any
Unicode, control tokens, NaN/Infinity, duplicate keys, lone surrogates, byte-order marks, invalid UTF-8,
truncated lines, deep nesting, huge numbers and sizes) go through `rules.validate_dir` and `data.read_jsonl`.

The property (``check_folder``): the gate never raises and ends in bounded time (the process's CPU time, so a
busy machine does not trip it); every failure names the file, the line (but for file-level rules) and the field
(for record rules); the reader either loads a file or raises DataError naming the file and line, exactly for
the lines the gate refuses as lines; and a folder the gate passes loads through every stage's reader and
encoder (sft, dpo rows and their checks, the reward model's pairs, PPO's prompts and pretraining texts) without
an error. Prints the count of folders tried and the
classes of input refused (gate rules, reader messages).

    .venv/bin/python benchmarks/fuzz_gate.py --examples 2000      # figures in benchmarks/README.md

tests/test_fuzz_gate.py runs the same property on a bounded number of examples.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import string
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import strategies as st  # noqa: E402

from components.core.data import FILES  # noqa: E402
from components.core.encode import SMOLLM2_CONTROL_TOKENS  # noqa: E402

SCHEMA_FIELDS = {
    FILES["demonstrations"]: ("id", "prompt", "response", "user_id", "split"),
    FILES["comparisons"]: ("id", "prompt", "responses", "ranks", "prompt_type", "user_id", "split", "labeled_at"),
    FILES["prompts"]: ("id", "prompt", "prompt_type", "user_id", "split"),
    FILES["pretrain"]: ("id", "text", "split"),
}
SPECIAL = ["", " ", "\u200b", "\u200d", "\ufeff", "\ufffe", "\U0010ffff", "\x00", "\x07", "\x85", "\r\n", "\t",
           "<|", "|>", "\u202e", "é", "😀", *SMOLLM2_CONTROL_TOKENS]
LINE_RULE_SPLIT = re.compile(r"^(?P<file>.+?):(?P<line>\d+): ")
READER_KINDS = ("not valid UTF-8", "not valid JSON", "appears twice", "lone surrogate", "byte-order mark",
                "expected a JSON object", "broken gzip")

# ------------------------------------------------------------------------------------- strategies
TEXT = st.one_of(
    st.text(max_size=20),  # any code point but surrogates
    st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(alphabet=string.ascii_letters + " .?", max_size=8)),
             max_size=6).map("".join),
    st.integers(0, 5000).map(lambda n: "y" * n),  # lengths around the gate's limits (4000 characters)
)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON_VALUE = st.recursive(SCALAR, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=3),
                          max_leaves=8)


@st.composite
def plausible(draw, field: str):
    """A value of the right kind for ``field`` (mostly), so that records get past the type rules."""
    if field in ("split",):
        return draw(st.sampled_from(["train", "eval", "test", "", 1]))
    if field == "prompt_type":
        return draw(st.sampled_from(["open", "closed", "creative"]))
    if field == "responses":
        k = draw(st.integers(0, 10))
        return draw(st.lists(TEXT, min_size=k, max_size=k))
    if field == "ranks":
        k = draw(st.integers(0, 10))
        return draw(st.lists(st.integers(-1, 9), min_size=k, max_size=k))
    if field == "user_id":
        return draw(st.sampled_from(["alice", "bob", "carol", ""]))
    if field == "id":
        return draw(st.one_of(st.sampled_from(["r1", "r2", "r3"]), TEXT))
    return draw(TEXT)


@st.composite
def record(draw, name: str):
    fields = SCHEMA_FIELDS[name]
    rec = {}
    for f in fields:
        if draw(st.integers(0, 9)) < 8:  # mostly present
            rec[f] = draw(JSON_VALUE) if draw(st.integers(0, 9)) == 0 else draw(plausible(f))
    if draw(st.integers(0, 9)) == 0:
        rec[draw(TEXT)] = draw(JSON_VALUE)  # an unknown field
    if name == FILES["comparisons"] and isinstance(rec.get("responses"), list) and draw(st.booleans()):
        k = len(rec["responses"])  # a consistent ranking, often
        rec["ranks"] = draw(st.permutations(list(range(k)))) if k else []
    return rec


@st.composite
def line(draw, name: str) -> bytes:
    """One line of a JSONL file, valid or broken in one of many ways."""
    kind = draw(st.sampled_from(["json"] * 6 + ["ascii_json", "truncated", "duplicate_key", "lone_surrogate",
                                                "bom", "bytes", "blank", "deep", "big_number", "not_object", "nan"]))
    rec = draw(record(name))
    text = json.dumps(rec, ensure_ascii=kind == "ascii_json")
    if kind == "truncated":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif kind == "duplicate_key":
        text = '{"id": "dup", ' + text[1:] if text != "{}" else '{"id": "a", "id": "b"}'
    elif kind == "lone_surrogate":
        text = json.dumps({**rec, "prompt": "x"}).replace('"x"', '"a\\ud%03xb"' % draw(st.integers(0x800, 0xfff)), 1)
    elif kind == "bom":
        text = "\ufeff" + text
    elif kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b"")
    elif kind == "blank":
        text = draw(st.sampled_from(["", "   ", "\t"]))
    elif kind == "deep":
        depth = draw(st.sampled_from([10, 100, 1000, 100000]))
        text = '{"id": "deep", "prompt": ' + "[" * depth + "]" * depth + "}"
    elif kind == "big_number":
        text = '{"id": "n", "ranks": [' + "9" * draw(st.sampled_from([10, 5000, 50000])) + "]}"
    elif kind == "not_object":
        text = json.dumps(draw(JSON_VALUE))
    elif kind == "nan":
        text = '{"id": "nan", "ranks": [NaN, Infinity, -Infinity], "prompt": NaN}'
    return text.encode("utf-8", "surrogatepass")


# Text the gate accepts: any printable character of any script (no control characters, surrogates, private
# use or unassigned code points, no U+FEFF), not blank, no control token, within the length limits.
GOOD_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs", "Co", "Cn"), exclude_characters="\ufeff"),
                    min_size=1, max_size=30).filter(
    lambda t: t.strip() and not any(c in t for c in SMOLLM2_CONTROL_TOKENS) and any(
        not (ch.isspace() or __import__("unicodedata").category(ch) == "Cf") for ch in t))


@st.composite
def good_record(draw, name: str) -> dict:
    """A record that passes the gate (ids unique by construction: a random 12-hex suffix)."""
    rec = {"id": f"r-{draw(st.integers(0, 2**48)):012x}"}
    if name == FILES["pretrain"]:
        return rec | {"text": draw(GOOD_TEXT)}
    rec["prompt"] = draw(GOOD_TEXT)
    if name == FILES["demonstrations"]:
        rec["response"] = draw(GOOD_TEXT)
    elif name == FILES["comparisons"]:
        k = draw(st.integers(2, 9))
        rec["responses"] = [f"{i}: {t}" for i, t in enumerate(draw(st.lists(GOOD_TEXT, min_size=k, max_size=k)))]
        ranks = draw(st.lists(st.integers(0, k - 1), min_size=k, max_size=k).filter(lambda r: len(set(r)) > 1))
        rec["ranks"] = ranks
    if name != FILES["pretrain"] and draw(st.booleans()):
        rec["user_id"] = f"u{draw(st.integers(0, 5))}"
    return rec


@st.composite
def folder(draw) -> dict[str, list[bytes] | None]:
    """The four files of a data folder: either anything (a file absent, empty, any lines), or mostly good
    records with a broken line now and then (so that some folders pass, and go on to every stage's encoder)."""
    files = {}
    hostile = draw(st.booleans())
    for name in SCHEMA_FIELDS:
        if hostile and draw(st.integers(0, 19)) == 0:
            files[name] = None
        elif hostile:
            files[name] = draw(st.lists(line(name), max_size=6))
        else:
            good = good_record(name).map(lambda r: json.dumps(r, ensure_ascii=False).encode())
            files[name] = draw(st.lists(st.one_of(*[good] * 12, line(name)), min_size=1, max_size=5))
    return files


def write_folder(d: Path, files: dict[str, list[bytes] | None]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        if lines is not None:
            (d / name).write_bytes(b"".join(x + b"\n" for x in lines))
    return d


# ------------------------------------------------------------------------------------- the property
FILE_RULES = ("file_missing", "file_empty")


def check_folder(d: Path, tokenizer, classes: Counter | None = None, max_seconds: float = 120.0) -> dict:
    """The property of the module docstring, on folder ``d``; returns the gate's report. ``classes`` counts
    what was refused (gate rules; reader messages as 'reader: <kind>')."""
    from components.core.data import read_jsonl
    from components.core.errors import DataError
    from components.datasets import rules

    t0 = time.process_time()  # CPU time of this process: a starved or shared machine does not trip the bound
    report = rules.validate_dir(d)
    seconds = time.process_time() - t0
    assert seconds < max_seconds, f"the gate took {seconds:.0f} s of CPU time"
    json.dumps(report, ensure_ascii=False).encode("utf-8")  # the report can be written as UTF-8
    line_refused: dict[str, set[int]] = {}
    for f in report["failures"]:
        assert Path(f["file"]).parent == d and f["rule"] in rules.RULES and f["message"], f
        if f["rule"] in FILE_RULES:
            assert f["line"] is None
        else:
            assert isinstance(f["line"], int) and f["line"] >= 1, f
        if f["rule"] in rules.LINE_RULES:
            line_refused.setdefault(Path(f["file"]).name, set()).add(f["line"])
        elif f["rule"] not in FILE_RULES:
            assert f["field"] is not None, f  # a record rule names the field (an unknown field may be named '')
        if classes is not None:
            classes[f["rule"]] += 1
    for name in SCHEMA_FIELDS:
        path = d / name
        if not path.exists():
            continue
        try:
            read_jsonl(path)
            assert not line_refused.get(name), f"the gate refused lines {line_refused[name]} of {name}, the reader none"
        except DataError as e:
            m = LINE_RULE_SPLIT.match(str(e))
            assert m and m["file"] == str(path), str(e)
            assert int(m["line"]) == min(line_refused.get(name, {0})), \
                f"the reader refused {name} at line {m['line']}, the gate's line rules at {line_refused.get(name)}: {e}"
            if classes is not None:
                said = str(e)[m.end():]
                classes["reader: " + next((k for k in READER_KINDS if k in said), said[:40])] += 1
    if report["success"]:
        load_through_every_stage(d, tokenizer)
        if classes is not None:
            classes["passed, loaded by every stage"] += 1
    return report


def load_through_every_stage(d: Path, tokenizer) -> None:
    """What each stage does with the data before training: read, split, build its rows, encode."""
    from components.core import encode as E
    from components.core import trainers
    from components.core.data import read_jsonl, split_records, take
    from components.maths.reward_losses import pairs_from_ranks
    from components.stages import dpo, sft

    demos, comps = read_jsonl(d / FILES["demonstrations"]), read_jsonl(d / FILES["comparisons"])
    prompts, texts = read_jsonl(d / FILES["prompts"]), read_jsonl(d / FILES["pretrain"])
    for recs in (demos, comps, prompts, texts):
        train, evals = split_records(recs, 0.1, 0)
        take(train, 2)
    rows = [sft.to_conversation(r, "") for r in demos]
    trainers.check_lengths("sft", tokenizer, rows, 10**6, d / FILES["demonstrations"], ids=[r["id"] for r in demos])
    pairs = dpo.expand_pairs(comps, 0, 0, "")
    if pairs:
        trainers.check_lengths("dpo", tokenizer, pairs, 10**6, d / FILES["comparisons"])
    for r in comps:
        pairs_from_ranks(r["ranks"])
        for answer in r["responses"]:
            E.encode_pair(tokenizer, r["prompt"], answer, "", 512)
    E.encode_prompts(tokenizer, [r["prompt"] for r in prompts], "", 256)
    E.encode_texts(tokenizer, [r["text"] for r in texts], 256)


def main() -> int:
    from hypothesis import HealthCheck, given, settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="data folders to generate")
    ap.add_argument("--tokenizer", help="a tokenizer folder (default: the packaged SmolLM2's, loaded once)")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from components.stages.base_model import load_tokenizer

        tokenizer = load_tokenizer("smollm2")
    classes: Counter = Counter()
    tracebacks: Counter = Counter()
    examples: dict[str, str] = {}
    tried = [0]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rlhf-fuzz-") as tmp:
        @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(files=folder())
        def fuzz(files):
            tried[0] += 1
            d = write_folder(Path(tmp) / f"f{tried[0]}", files)
            try:
                check_folder(d, tokenizer, classes)
            except Exception as e:  # noqa: BLE001 -- counted and shown, the run goes on (the figure must be 0)
                import traceback

                frame = traceback.extract_tb(e.__traceback__)[-1]
                key = f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(e)[:120]}"
                tracebacks[key] += 1
                examples.setdefault(key, repr(files)[:600])
            finally:
                shutil.rmtree(d)
            if tried[0] % 50 == 0:  # progress: folders so far, tracebacks so far, rate
                print(f"[fuzz] {tried[0]}/{args.examples} folders, {sum(tracebacks.values())} tracebacks, "
                      f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)

        # SIGTERM (a `timeout`) or Ctrl-C ends the run early; the figures so far are still printed and written
        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        interrupted = False
        try:
            fuzz()
        except KeyboardInterrupt:
            interrupted = True
    figures = {"folders": tried[0], "interrupted": interrupted, "seconds": round(time.time() - t0),
               "tracebacks": sum(tracebacks.values()),
               "traceback_kinds": dict(tracebacks.most_common()), "examples": examples,
               "classes": dict(classes.most_common())}
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
