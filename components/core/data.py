"""The project's data formats: JSONL files read with errors that name file, line and field.

Four files live in ``data/`` (tracked by ``data.dvc``):

- ``demonstrations.jsonl``: ``{"id", "prompt", "response", "user_id"?, "split"?}``
- ``comparisons.jsonl``:    ``{"id", "prompt", "responses": [K str], "ranks": [K int],
  "prompt_type"?: "open"|"closed", "user_id"?, "split"?}``, 2 <= K <= 9, rank 0 = best,
  equal ranks = a tie, not all equal.
- ``prompts.jsonl``:        ``{"id", "prompt", "prompt_type"?, "user_id"?, "split"?}`` (RL prompts)
- ``pretrain.jsonl``:       ``{"id", "text", "split"?}`` (pretraining mix for PPO-ptx)

``split`` ("train" | "eval") is optional: when absent, records are split by ``user_id``
(InstructGPT's rule: no labeler/user on both sides); a record without a user is grouped with every
other record of its conversation (its first human turn, see ``conversation_key``), so the same
question never lands on both sides; a record with neither (pretraining text) is its own unit.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from components.core.errors import DataError

FILES = {
    "demonstrations": "demonstrations.jsonl",
    "comparisons": "comparisons.jsonl",
    "prompts": "prompts.jsonl",
    "pretrain": "pretrain.jsonl",
}
K_MIN, K_MAX = 2, 9
SPLITS = ("train", "eval")
# Control characters refused in text: C0 (except \t = 0x09 and \n = 0x0a), DEL and C1.
CONTROL_CHARS = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every non-blank line; 1-based line numbers.

    Plain or gzip-compressed (recognised by its magic bytes, whatever the name). Raises DataError
    naming the file and line for a missing or unreadable file, broken gzip data, invalid UTF-8,
    invalid JSON, a key given twice in one object, a line that is not a JSON object, a lone
    surrogate (a ``\\ud800`` escape) in a key or a value (naming the field), or a byte-order mark
    at the start of a line other than the first (one at the very start of the file is accepted).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == b"\x1f\x8b" else raw
        lineno = 0
        while True:
            try:
                line = stream.readline()
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}:{lineno + 1}: broken gzip data ({e})") from None
            if not line:
                return
            lineno += 1
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start})") from None
            if lineno == 1 and text.startswith(BOM):
                text = text[1:]  # a UTF-8 byte-order mark at the start of the file (Excel, Notepad): accepted
            if not text.strip():
                continue
            if text.startswith(BOM):
                raise DataError(f"{path}:{lineno}: {BOM_MESSAGE}")
            try:
                rec = loads_object(text.rstrip("\r\n"))
            except DuplicateKey as e:
                raise DataError(f"{path}:{lineno}: {e}") from None
            except (ValueError, RecursionError) as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({json_problem(e)})") from None
            if not isinstance(rec, dict):
                kind = "list" if isinstance(rec, list) else type(rec).__name__
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {kind}")
            if (bad := lone_surrogate(rec)) is not None:
                raise DataError(f"{path}:{lineno}: {bad}")
            yield lineno, rec


BOM = "\ufeff"
BOM_MESSAGE = ("starts with a byte-order mark (U+FEFF), which only the start of a file may have "
               "(were two files joined?)")
_SURROGATE = re.compile("[\ud800-\udfff]")


class DuplicateKey(ValueError):
    """A JSON object gives the same key twice (``json`` would silently keep the last value)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(f"the key '{_escaped(key)}' appears twice in one object (which value is meant?)")
    return obj


MAX_DEPTH = 32  # arrays/objects inside each other; the data formats need 2 (a list of strings in an object)


class TooDeep(ValueError):
    """A JSON value nests arrays or objects more than ``MAX_DEPTH`` levels deep."""


def loads_object(text: str) -> Any:
    """``json.loads`` that refuses an object giving a key twice (``DuplicateKey``) and values nested more
    than ``MAX_DEPTH`` levels deep (``TooDeep``: every later check may walk the value recursively)."""
    value = json.loads(text, object_pairs_hook=_object)
    stack = [(value, 1)]
    while stack:  # iterative: the value may be nested as deep as json's own limit
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise TooDeep(f"arrays or objects nested more than {MAX_DEPTH} levels deep")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return value


def json_problem(e: ValueError | RecursionError) -> str:
    """Why ``json.loads`` refused a line, for 'not valid JSON (...)': its message and column, or what
    Python's own limits say (an integer of more than 4300 digits, arrays or objects nested too deep)."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}"
    if isinstance(e, RecursionError):
        return "arrays or objects nested too deeply"
    if "integer string conversion" in str(e):
        return "an integer with more digits than Python converts (4300)"
    return str(e)


def lone_surrogate(rec: dict[str, Any]) -> str | None:
    """Where a decoded JSON record holds a lone surrogate, as a sentence; None when it holds none.

    JSON's ``\\ud800`` escape decodes to half of a UTF-16 pair, which is not a character: it cannot
    be written back as UTF-8 nor tokenised, so a record holding one (in a key or a value) is refused.
    """
    for where, text in _strings(rec):
        if m := _SURROGATE.search(text):
            return (f"{where} holds a lone surrogate U+{ord(m.group()):04X} at position {m.start()} "
                    f"(a \\u{ord(m.group()):04x} JSON escape without the other half of its pair): not text")
    return None


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, string) for every key and string value inside a JSON value, depth first."""
    if isinstance(value, str):
        yield f"field '{path}'", value
    elif isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            yield f"the key '{_escaped(sub)}'", k
            yield from _strings(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def _escaped(text: str) -> str:
    """``text`` with each lone surrogate written as ``\\uXXXX``, so that it can be printed."""
    return _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL file (see iter_jsonl for the errors)."""
    return [rec for _, rec in iter_jsonl(path)]


def dumps_record(rec: dict[str, Any]) -> str:
    """One canonical JSONL line (UTF-8 kept, key order kept, no trailing spaces)."""
    return json.dumps(rec, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for rec in records:
                f.write(dumps_record(rec))
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


# How a multi-turn prompt is written (datasets.importers.render_dialogue): hh-rlhf's own labels.
HUMAN, ASSISTANT = "Human", "Assistant"
_WHITESPACE = re.compile(r"\s+")


def conversation_key(prompt: str) -> str:
    """The conversation a prompt belongs to: its first human turn, whitespace-collapsed and case-folded.

    A multi-turn prompt (``"Human: <turn 1>\\n\\nAssistant: ..."``) belongs to its first turn; any
    other prompt is its own first turn. So hh-rlhf dialogues that open with the same question, and an
    OpenAssistant root message and its deeper turns, share one key.
    """
    head = f"{HUMAN}:"
    if prompt.startswith(head) and f"\n\n{ASSISTANT}:" in prompt:
        prompt = prompt[len(head):].split(f"\n\n{ASSISTANT}:", 1)[0]
    return _WHITESPACE.sub(" ", prompt).strip().casefold()


def user_key(rec: dict[str, Any]) -> str:
    """The unit of the train/eval split: the user; without one, the conversation (``conversation_key``)
    of the record's prompt; without a prompt (pretraining text), the record itself."""
    user = rec.get("user_id")
    if user not in (None, ""):
        return f"user:{user}"
    if isinstance(rec.get("prompt"), str):
        return f"conversation:{conversation_key(rec['prompt'])}"
    return f"record:{rec['id']}"


def split_of(rec: dict[str, Any], eval_fraction: float, seed: int) -> str:
    """"train" or "eval" for one record: its explicit ``split``, else a seeded hash of its user.

    Hashing (not shuffling) keeps a user's side stable when records are added, so a grown
    data set never moves an old user from train to eval.
    """
    if rec.get("split") in SPLITS:
        return rec["split"]
    h = hashlib.sha256(f"{seed}:{user_key(rec)}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "eval" if u < eval_fraction else "train"


def split_records(
    records: list[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) by user (see split_of); order inside each side is kept."""
    train, evals = [], []
    for rec in records:
        (evals if split_of(rec, eval_fraction, seed) == "eval" else train).append(rec)
    return train, evals


def take(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` records (0: all), rankings from the labeling page (``labeled_at``) first.

    A sample budget (``reward.max_samples``, ``dpo.max_samples``) must not drop the feedback
    loop's new labels, which are appended at the end of the file; other records keep file order.
    """
    if not n:
        return list(records)
    labeled = [r for r in records if "labeled_at" in r]
    return (labeled + [r for r in records if "labeled_at" not in r])[:n]


def next_indices(order: list[int], n_items: int, k: int, rng) -> tuple[list[int], list[int]]:
    """The next k of ``n_items`` indices from an endless seeded shuffle: (picked, the queue left).

    The queue is refilled with a fresh ``rng`` permutation whenever fewer than k remain (a new
    epoch), so a run resumed with the same queue and RNG state draws exactly the same batches.
    """
    if len(order) < k:
        more = list(range(n_items))
        rng.shuffle(more)
        order = order + more
    return order[:k], order[k:]
