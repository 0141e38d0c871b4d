"""The data gate's rules: one great-expectations suite per data file, a report a person can act on.

``validate_dir`` reads the four files of ``components/core/data.py`` line by line, turns every JSON
object into one row of a pandas frame and validates that frame with a great-expectations (GX 1.x)
suite in an ephemeral context. Rules GX has a native expectation for use it directly (not null,
unique, value lengths, regex, value sets, row count); rules it cannot express (ranks vs responses,
duplicates inside a list, users across files) become one boolean column each, computed here, and
gated with ``expect_column_values_to_be_in_set([True])``, so every rule is an expectation in the
GX result. ``result_format="COMPLETE"`` (asked only for the expectations that failed a cheap
``BOOLEAN_ONLY`` pass) gives the row index of every failing row, mapped back to the file's 1-based
line number, the record id and the field.

Lines that are not valid UTF-8, are not JSON, give a key twice, are not a JSON object, hold a lone
surrogate (a ``\\ud800`` escape: not text), or start with a byte-order mark other than the one a file
may start with are reported before GX (by line number) and left out of the frame; the other lines are
still checked. Text is blank when nothing is left after removing whitespace and invisible format
characters (zero-width spaces and joiners, bidi marks, U+FEFF: Unicode category Cf).

Text fields must hold no control characters, no Unicode non-characters (U+FDD0..U+FDEF, U+xFFFE,
U+xFFFF) or byte-order marks, and no control token of the tokenizer (``<|im_start|>`` ...: only the
chat template may write those; ``control_tokens_for`` says which tokens, ``components/core/encode.py``
why).

Every "derived" column is None (= not applicable, skipped by GX) when an earlier rule already
failed for that field (e.g. a wrong type), so one problem gives one failure.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.core.data import (BOM, BOM_MESSAGE, CONTROL_CHARS, FILES, K_MAX, K_MIN, SPLITS, DuplicateKey,
                                  iter_jsonl, json_problem, loads_object, lone_surrogate, split_of)
from components.core.errors import DataError, ValidationFailed
from components.core.encode import SMOLLM2_CONTROL_TOKENS, control_pattern, gate_control_tokens
from components.datasets.judgements import FILE as JUDGEMENTS
from components.datasets.judgements import WINNERS

PROMPT_TYPES = ("open", "closed")
# Unicode non-characters (permanently reserved, never text: U+FDD0..U+FDEF and the last two code
# points of every plane) and the byte-order mark U+FEFF inside text (an invisible left-over of joined files).
NONCHARACTERS = "[\ufdd0-\ufdef\ufeff" + "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}"
                                                  for p in range(17)) + "]"

# Field -> JSON type name (see _json_type) per file; optional fields may be absent.
SCHEMAS: dict[str, dict[str, dict[str, str]]] = {
    FILES["demonstrations"]: {
        "required": {"id": "str", "prompt": "str", "response": "str"},
        "optional": {"user_id": "str", "split": "str"},
    },
    FILES["comparisons"]: {
        "required": {"id": "str", "prompt": "str", "responses": "list[str]", "ranks": "list[int]"},
        # labeled_at .. labeler: provenance written by the ranking page (components/apps/label.py)
        "optional": {"prompt_type": "str", "user_id": "str", "split": "str",
                     "labeled_at": "str", "model_version": "str", "queue_item": "str", "labeler": "str"},
    },
    FILES["prompts"]: {
        "required": {"id": "str", "prompt": "str"},
        "optional": {"prompt_type": "str", "user_id": "str", "split": "str"},
    },
    FILES["pretrain"]: {
        "required": {"id": "str", "text": "str"},
        "optional": {"split": "str"},
    },
    # blind A/B judgements (components/datasets/judgements.py): evaluation data, not training data, so
    # the validate stage leaves them out (``JUDGEMENTS``); `rlhf label --commit` and promote check them
    JUDGEMENTS: {
        "required": {"id": "str", "prompt": "str", "responses": "list[str]", "model_versions": "list[str]",
                     "winner": "str", "labeled_at": "str", "queue_item": "str", "labeler": "str"},
        "optional": {"prompt_type": "str", "shown_first": "str"},
    },
}
ALLOWED_VALUES = {"split": SPLITS, "prompt_type": PROMPT_TYPES, "winner": WINNERS, "shown_first": ("a", "b")}
# Text field -> the validate_dir keyword that bounds its length.
LIMIT_ARGS = {"prompt": "max_prompt_chars", "response": "max_response_chars",
              "responses": "max_response_chars", "text": "max_text_chars"}

# Stable rule names, in report order.
RULES = (
    "file_missing", "file_empty", "valid_utf8", "no_bom", "valid_json", "unique_keys", "json_object", "valid_unicode",
    "required", "type", "unknown_field", "non_empty", "max_length", "no_control_chars", "no_noncharacters",
    "no_control_tokens", "allowed_value", "unique_id", "k_in_range", "ranks_valid_for_responses",
    "ranks_not_all_equal", "distinct_responses", "user_in_one_split", "one_pair",
)
LINE_RULES = ("valid_utf8", "no_bom", "valid_json", "unique_keys", "json_object", "valid_unicode")


# ---------------------------------------------------------------- reading


def _read_lines(path: Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str, str]], int]:
    """Parse a JSONL file leniently.

    Returns ``(records, bad_lines, n_nonblank)``: records = [(line, obj)] for every line that is a
    JSON object, bad_lines = [(line, rule, message)] for the others; blank lines are skipped. The
    rules and messages are those of ``data.iter_jsonl`` (which the stages read with).
    """
    records, bad = [], []
    n_nonblank = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            n_nonblank += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append((lineno, "valid_utf8", f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})"))
                continue
            if lineno == 1 and line.startswith(BOM):
                line = line[1:]  # the byte-order mark a file may start with (as data.iter_jsonl accepts it)
            if line.startswith(BOM):
                bad.append((lineno, "no_bom", BOM_MESSAGE))
                continue
            try:
                rec = loads_object(line.rstrip("\r\n"))
            except DuplicateKey as e:
                bad.append((lineno, "unique_keys", str(e)))
                continue
            except (ValueError, RecursionError) as e:  # JSONDecodeError, and Python's own limits
                bad.append((lineno, "valid_json", f"not valid JSON ({json_problem(e)})"))
                continue
            if not isinstance(rec, dict):
                kind = "array" if isinstance(rec, list) else _json_type(rec)
                bad.append((lineno, "json_object", f"expected a JSON object, got {kind}"))
                continue
            if (problem := lone_surrogate(rec)) is not None:
                bad.append((lineno, "valid_unicode", problem))
                continue
            records.append((lineno, rec))
    return records, bad, n_nonblank


def is_invisible(ch: str) -> bool:
    """Whitespace, or an invisible format character (Unicode category Cf: U+200B zero-width space,
    U+200C/U+200D joiners, U+2060 word joiner, U+FEFF, bidi marks, soft hyphen, ...)."""
    return ch.isspace() or unicodedata.category(ch) == "Cf"


def visible_strip(text: str) -> str:
    """``text`` without the whitespace and invisible format characters at either end (blank -> '')."""
    i, j = 0, len(text)
    while i < j and is_invisible(text[i]):
        i += 1
    while j > i and is_invisible(text[j - 1]):
        j -= 1
    return text[i:j]


def _json_type(v: Any) -> str:
    """Type name of a JSON value: null, bool, int, float, str, object, list[<elem types>|]."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "list[" + "|".join(sorted({_json_type(x) for x in v})) + "]"
    return "object" if isinstance(v, dict) else type(v).__name__


def _ok_types(expected: str) -> list[str]:
    """Type names accepted for a field; an empty list is a list of anything (K is checked apart)."""
    return [expected, "list[]"] if expected.startswith("list[") else [expected]


# ---------------------------------------------------------------- rows and suites


def _row(rec: dict, schema: dict, user_ok: dict[str, bool]) -> dict[str, Any]:
    """One frame row: per field its type name and checked copies; None = rule not applicable."""
    fields = schema["required"] | schema["optional"]
    row: dict[str, Any] = {}
    typed: dict[str, Any] = {}
    for f, expected in fields.items():
        v = rec.get(f)
        row[f"_type_{f}"] = None if v is None else _json_type(v)
        typed[f] = v if v is not None and _json_type(v) in _ok_types(expected) else None
    unknown = sorted(set(rec) - set(fields))
    row["_unknown_fields"] = ", ".join(unknown) if unknown else None  # GX: must be null
    for f, expected in fields.items():
        v = typed[f]
        if expected == "str":
            row[f] = v
            row[f"_stripped_{f}"] = visible_strip(v) if v is not None else None
        elif f == "responses":
            row["_shortest_stripped_responses"] = min((visible_strip(r) for r in v), key=len) if v else None
            row["_longest_responses"] = max(v, key=len) if v else None
            row["_joined_responses"] = "\n".join(v) if v is not None else None
    if "ranks" in fields:
        resp, ranks = typed["responses"], typed["ranks"]
        k = len(resp) if resp is not None else None
        row["_k"] = k
        row["_ranks_valid"] = (
            None if resp is None or ranks is None else len(ranks) == k and all(0 <= r < k for r in ranks)
        )
        row["_ranks_not_all_equal"] = None if ranks is None or len(ranks) < 2 else len(set(ranks)) > 1
        row["_distinct_responses"] = None if resp is None else len({visible_strip(r) for r in resp}) == len(resp)
    if "user_id" in fields:
        u = typed["user_id"]
        row["_user_in_one_split"] = user_ok.get(u) if u else None
    if "model_versions" in fields:  # a judgement: two distinct answers of two distinct model versions
        resp, versions = typed["responses"], typed["model_versions"]
        row["_one_pair"] = None if resp is None or versions is None else (
            len(resp) == 2 and len({visible_strip(r) for r in resp}) == 2 and len(versions) == 2
            and all(v.strip() for v in versions) and versions[0] != versions[1])
    return row


def _expectations(name: str, limits: dict, control_regex: str) -> list[tuple[str, str | None, str, dict]]:
    """The suite of one file as (rule, field, GX expectation class name, kwargs)."""
    schema = SCHEMAS[name]
    fields = schema["required"] | schema["optional"]
    ex: list[tuple[str, str | None, str, dict]] = [
        ("file_empty", None, "ExpectTableRowCountToBeBetween", {"min_value": 1}),
    ]
    for f in schema["required"]:
        ex.append(("required", f, "ExpectColumnValuesToNotBeNull", {"column": f"_type_{f}"}))
    for f, t in fields.items():
        ex.append(("type", f, "ExpectColumnValuesToBeInSet", {"column": f"_type_{f}", "value_set": _ok_types(t)}))
    ex.append(("unknown_field", None, "ExpectColumnValuesToBeNull", {"column": "_unknown_fields"}))
    for f, t in fields.items():
        if t == "str" and f not in ALLOWED_VALUES:
            ex.append(("non_empty", f, "ExpectColumnValueLengthsToBeBetween", {"column": f"_stripped_{f}", "min_value": 1}))
    if "responses" in fields:
        ex.append(("non_empty", "responses", "ExpectColumnValueLengthsToBeBetween",
                   {"column": "_shortest_stripped_responses", "min_value": 1}))
    for f, col in (("prompt", "prompt"), ("response", "response"), ("responses", "_longest_responses"), ("text", "text")):
        if f in fields:
            ex.append(("max_length", f, "ExpectColumnValueLengthsToBeBetween", {"column": col, "max_value": limits[f]}))
    for f, t in fields.items():
        if t == "str" and f not in ALLOWED_VALUES:
            ex.append(("no_control_chars", f, "ExpectColumnValuesToNotMatchRegex", {"column": f, "regex": CONTROL_CHARS}))
    if "responses" in fields:
        ex.append(("no_control_chars", "responses", "ExpectColumnValuesToNotMatchRegex",
                   {"column": "_joined_responses", "regex": CONTROL_CHARS}))
    for rule, regex in (("no_noncharacters", NONCHARACTERS), ("no_control_tokens", control_regex)):
        for f, t in fields.items():
            if t == "str" and f not in ALLOWED_VALUES:
                ex.append((rule, f, "ExpectColumnValuesToNotMatchRegex", {"column": f, "regex": regex}))
        if "responses" in fields:
            ex.append((rule, "responses", "ExpectColumnValuesToNotMatchRegex", {"column": "_joined_responses", "regex": regex}))
    for f, allowed in ALLOWED_VALUES.items():
        if f in fields:
            ex.append(("allowed_value", f, "ExpectColumnValuesToBeInSet", {"column": f, "value_set": list(allowed)}))
    ex.append(("unique_id", "id", "ExpectColumnValuesToBeUnique", {"column": "id"}))
    if "ranks" in fields:
        ex += [
            ("k_in_range", "responses", "ExpectColumnValuesToBeBetween", {"column": "_k", "min_value": K_MIN, "max_value": K_MAX}),
            ("ranks_valid_for_responses", "ranks", "ExpectColumnValuesToBeInSet", {"column": "_ranks_valid", "value_set": [True]}),
            ("ranks_not_all_equal", "ranks", "ExpectColumnValuesToBeInSet", {"column": "_ranks_not_all_equal", "value_set": [True]}),
            ("distinct_responses", "responses", "ExpectColumnValuesToBeInSet", {"column": "_distinct_responses", "value_set": [True]}),
        ]
    if "user_id" in fields:
        ex.append(("user_in_one_split", "user_id", "ExpectColumnValuesToBeInSet",
                   {"column": "_user_in_one_split", "value_set": [True]}))
    if "model_versions" in fields:
        ex.append(("one_pair", "model_versions", "ExpectColumnValuesToBeInSet", {"column": "_one_pair", "value_set": [True]}))
    return ex


# ---------------------------------------------------------------- messages


def _control_char_at(s: str) -> str | None:
    """'control character U+0007 at position 3' for the first one in ``s``, else None."""
    m = re.search(CONTROL_CHARS, s)
    return f"control character U+{ord(m.group()):04X} at position {m.start()}" if m else None


def _noncharacter_at(s: str) -> str | None:
    """'non-character U+FFFE at position 3' (or 'byte-order mark U+FEFF ...') for the first one in ``s``."""
    m = re.search(NONCHARACTERS, s)
    if not m:
        return None
    what = "byte-order mark" if m.group() == BOM else "non-character"
    return f"{what} U+{ord(m.group()):04X} at position {m.start()}"


def _control_token_at(s: str, pattern: re.Pattern) -> str | None:
    """"the control token '<|im_start|>' at position 3" for the first one in ``s``, else None."""
    m = pattern.search(s)
    return f"the control token {m.group()!r} at position {m.start()}" if m else None


def _message(rule: str, field: str | None, rec: dict, ctx: dict) -> str:
    """A human sentence for one failing record (``ctx``: limits, id lines, user sides)."""
    v = rec.get(field) if field else None
    if rule == "required":
        return f"required field '{field}' is missing" if field not in rec else f"required field '{field}' is null"
    if rule == "type":
        want = SCHEMAS[ctx["name"]]["required"].get(field) or SCHEMAS[ctx["name"]]["optional"][field]
        return f"expected {want}, got {_json_type(v)} ({_short(v)})"
    if rule == "unknown_field":
        allowed = SCHEMAS[ctx["name"]]["required"] | SCHEMAS[ctx["name"]]["optional"]
        unknown = _unknown(ctx["name"], rec)
        return f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)})"
    if rule == "non_empty":
        if field == "responses":
            i = min(range(len(v)), key=lambda j: len(visible_strip(v[j])))
            text, name = v[i], f"responses[{i}]"
        else:
            text, name = v, field
        why = "(after strip)" if not text.strip() else "(nothing but whitespace and invisible format characters)"
        return f"{name} is empty {why}"
    if rule == "max_length":
        limit_name, limit = LIMIT_ARGS[field], ctx["limits"][field]
        if field == "responses":
            i = max(range(len(v)), key=lambda j: len(v[j]))
            return f"responses[{i}] has {len(v[i])} characters > {limit_name}={limit}"
        return f"{field} has {len(v)} characters > {limit_name}={limit}"
    if rule in ("no_control_chars", "no_noncharacters", "no_control_tokens"):
        find = {"no_control_chars": _control_char_at, "no_noncharacters": _noncharacter_at,
                "no_control_tokens": lambda text: _control_token_at(text, ctx["control_pattern"])}[rule]
        why = " (only the chat template may write it)" if rule == "no_control_tokens" else ""
        if field == "responses":
            i = next(j for j, r in enumerate(v) if find(r))
            return f"responses[{i}] contains {find(v[i])}{why}"
        return f"{field} contains {find(v)}{why}"
    if rule == "allowed_value":
        return f"{field} {v!r} is not one of {list(ALLOWED_VALUES[field])}"
    if rule == "unique_id":
        lines = ctx["id_lines"][v]
        return f"id {v!r} is used on lines {', '.join(map(str, lines))}"
    if rule == "k_in_range":
        return f"K = len(responses) = {len(v)}, expected {K_MIN} <= K <= {K_MAX}"
    if rule == "ranks_valid_for_responses":
        k, ranks = len(rec["responses"]), rec["ranks"]
        if len(ranks) != k:
            return f"len(ranks) = {len(ranks)} but K = len(responses) = {k}"
        return f"ranks {ranks} must lie in [0, {k - 1}] for K = {k}"
    if rule == "ranks_not_all_equal":
        return f"ranks {v} are all equal (no preference pair)"
    if rule == "distinct_responses":
        seen: dict[str, int] = {}
        for j, r in enumerate(v):
            if visible_strip(r) in seen:
                return f"responses[{seen[visible_strip(r)]}] and responses[{j}] are the same text"
            seen[visible_strip(r)] = j
    if rule == "user_in_one_split":
        sides = ctx["user_sides"][v]
        where = "; ".join(f"{s}: {', '.join(sides[s][:3])}{', ...' if len(sides[s]) > 3 else ''}" for s in SPLITS)
        return f"user {v!r} is in both train and eval ({where})"
    if rule == "one_pair":
        return (f"a judgement compares 2 distinct answers of 2 distinct model versions: got {len(rec['responses'])} "
                f"responses and model_versions {_short(v)}")
    raise ValueError(f"no message for rule {rule!r}")


def _unknown(name: str, rec: dict) -> list[str]:
    """Fields of ``rec`` that the schema of file ``name`` does not know, sorted."""
    return sorted(set(rec) - set(SCHEMAS[name]["required"]) - set(SCHEMAS[name]["optional"]))


def _short(v: Any, n: int = 60) -> str:
    """JSON text of ``v``, cut to ``n`` characters."""
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 3] + "..."


# ---------------------------------------------------------------- validation


def _user_sides(parsed: dict[str, list[tuple[int, dict]]], eval_fraction: float, seed: int
                ) -> dict[str, dict[str, list[str]]]:
    """user_id -> {"train": [file:line, ...], "eval": [...]}: the side each record lands on.

    The side is the record's explicit ``split``, else ``split_of`` (a seeded hash of the user),
    exactly as the training stages split data; so a user with one record forced to "eval" and
    other records hashed to "train" is caught too.
    """
    sides: dict[str, dict[str, list[str]]] = defaultdict(lambda: {s: [] for s in SPLITS})
    for name, recs in parsed.items():
        if "user_id" not in SCHEMAS[name]["optional"]:
            continue
        for lineno, rec in recs:
            u = rec.get("user_id")
            if isinstance(u, str) and u and rec.get("split") in (None, *SPLITS):
                sides[u][split_of(rec, eval_fraction, seed)].append(f"{name}:{lineno}")
    return dict(sides)


def _run_suite(context, name: str, frame, suite_spec) -> list:
    """Validate ``frame`` with the suite ``suite_spec``; GX results in suite order. Raises on GX errors.

    Two passes: the whole suite with ``BOOLEAN_ONLY`` (about half the cost of ``COMPLETE``), then
    only the failed expectations again with ``COMPLETE`` to get every unexpected row index.
    """
    first = _gx_validate(context, name, "all", frame, suite_spec, "BOOLEAN_ONLY")
    failed = [i for i, r in enumerate(first) if not r.success]
    if failed:
        detail = _gx_validate(context, name, "failed", frame, [suite_spec[i] for i in failed], "COMPLETE")
        for i, r in zip(failed, detail):
            first[i] = r
    return first


def _gx_validate(context, name: str, tag: str, frame, suite_spec, result_format: str) -> list:
    """One GX ValidationDefinition run of ``suite_spec`` over ``frame``; results in suite order."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    key = f"{name.removesuffix('.jsonl')}_{tag}"
    batch = context.data_sources.add_pandas(f"ds_{key}").add_dataframe_asset(f"asset_{key}") \
        .add_batch_definition_whole_dataframe(f"batch_{key}")
    # All expectations at construction: add_expectation() re-serializes the whole suite each time.
    suite = context.suites.add(gx.ExpectationSuite(name=f"suite_{key}", expectations=[
        getattr(gxe, cls)(**kwargs, meta={"i": i, "rule": rule, "field": field})
        for i, (rule, field, cls, kwargs) in enumerate(suite_spec)]))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name=f"vd_{key}", data=batch, suite=suite))
    result = vd.run(batch_parameters={"dataframe": frame}, result_format={"result_format": result_format})
    out = [None] * len(suite_spec)
    for r in result.results:
        info = r.exception_info or {}
        if info.get("raised_exception"):
            raise RuntimeError(f"great_expectations failed on {name}, {r.expectation_config.meta}: "
                               f"{info.get('exception_message')}\n{info.get('exception_traceback')}")
        out[r.expectation_config.meta["i"]] = r
    return out


def validate_dir(
    data_dir: str | Path,
    *,
    max_prompt_chars: int = 4000,
    max_response_chars: int = 4000,
    max_text_chars: int = 20000,
    eval_fraction: float = 0.1,
    seed: int = 0,
    control_tokens: Iterable[str] = SMOLLM2_CONTROL_TOKENS,
    only: tuple[str, ...] | None = None,
) -> dict:
    """Check the four data files of ``data_dir`` (``only``: just these file names); never raises for
    bad data, only reports it.

    Length limits are in characters (Python ``len`` of the str). ``eval_fraction`` and ``seed`` are
    those of the training stages (``data.split_of``): they decide which side an unsplit user's
    records land on for the ``user_in_one_split`` rule. ``control_tokens``: the strings no text may
    hold (``control_tokens_for``: those of the configured tokenizer; default: the packaged SmolLM2's).

    Returns ``{"success", "data_dir", "control_tokens", "files": {file name: {"records", "success", "expectations":
    [{"rule", "field", "expectation", "success", "unexpected_count"}]}}, "failures": [{"file",
    "line", "id", "field", "rule", "message"}]}``; ``failures`` lists every failing record, sorted
    by file, line and rule; ``line``/``id``/``field`` are None where they do not apply.
    """
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    data_dir = Path(data_dir)
    limits = {"prompt": max_prompt_chars, "response": max_response_chars,
              "responses": max_response_chars, "text": max_text_chars}
    control_tokens = sorted(set(control_tokens))
    control = control_pattern(control_tokens)
    files: dict[str, dict] = {}
    failures: list[dict] = []

    # 1. Lines -> JSON objects (line-level failures, missing and empty files).
    parsed: dict[str, list[tuple[int, dict]]] = {}
    nonblank: dict[str, int] = {}
    for name in only or FILES.values():
        path = data_dir / name
        if not path.is_file():
            files[name] = {"records": 0, "success": False, "expectations": [
                {"rule": "file_missing", "field": None, "expectation": None, "success": False, "unexpected_count": 1}]}
            failures.append(_failure(path, None, None, None, "file_missing", "file not found"))
            continue
        recs, bad, nonblank[name] = _read_lines(path)
        parsed[name] = recs
        files[name] = {"records": len(recs), "success": True, "expectations": []}
        for rule in LINE_RULES:
            n = sum(1 for _, r, _ in bad if r == rule)
            files[name]["expectations"].append(
                {"rule": rule, "field": None, "expectation": None, "success": n == 0, "unexpected_count": n})
        failures += [_failure(path, lineno, None, None, rule, msg) for lineno, rule, msg in bad]

    # 2. Cross-file facts, then one GX suite per file.
    sides = _user_sides(parsed, eval_fraction, seed)
    user_ok = {u: not (s["train"] and s["eval"]) for u, s in sides.items()}
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for name, recs in parsed.items():
        path = data_dir / name
        spec = _expectations(name, limits, control.pattern)
        rows = [_row(rec, SCHEMAS[name], user_ok) for _, rec in recs]
        columns = sorted({kw["column"] for _, _, _, kw in spec if "column" in kw})
        frame = pd.DataFrame(rows, columns=columns).astype(object)
        frame = frame.where(frame.notna(), None)
        id_lines: dict[str, list[int]] = defaultdict(list)
        for lineno, rec in recs:
            if isinstance(rec.get("id"), str):
                id_lines[rec["id"]].append(lineno)
        ctx = {"name": name, "limits": limits, "id_lines": id_lines, "user_sides": sides, "control_pattern": control}
        for (rule, field, cls, kwargs), res in zip(spec, _run_suite(context, name, frame, spec)):
            r = res.result
            if rule == "file_empty":
                n_bad = 0 if res.success else 1
            else:
                n_bad = int(r.get("unexpected_count") or 0)
            files[name]["expectations"].append({"rule": rule, "field": field, "expectation": res.expectation_config.type,
                                                "success": bool(res.success), "unexpected_count": n_bad})
            if rule == "file_empty" and not res.success:
                msg = "the file has no records" if not nonblank[name] else \
                    f"no usable records: all {nonblank[name]} non-blank lines were refused"
                failures.append(_failure(path, None, None, None, rule, msg))
            for idx in r.get("unexpected_index_list") or []:
                lineno, rec = recs[int(idx)]
                rid = rec.get("id") if isinstance(rec.get("id"), str) else None
                field_name = ", ".join(_unknown(name, rec)) if rule == "unknown_field" else field
                failures.append(_failure(path, lineno, rid, field_name, rule, _message(rule, field, rec, ctx)))
        files[name]["success"] = all(e["success"] for e in files[name]["expectations"])

    order = {name: i for i, name in enumerate([*FILES.values(), JUDGEMENTS])}
    failures.sort(key=lambda x: (order[Path(x["file"]).name], x["line"] or 0, RULES.index(x["rule"])))
    return {"success": not failures and all(f["success"] for f in files.values()),
            "data_dir": str(data_dir), "control_tokens": control_tokens, "files": files, "failures": failures}


def control_tokens_for(cfg, who: str = "validate") -> tuple[str, ...]:
    """The control tokens of the configured tokenizer, for ``validate_dir``: the packaged SmolLM2's, plus
    those declared by the tokenizer files of ``base_model.source`` and of ``outputs/base_model`` when it
    was built from that source (``core.encode.gate_control_tokens``; no model is loaded)."""
    tokens, sources = gate_control_tokens(cfg.base_model.source, cfg.out_dir("base_model"))
    print(f"[{who}] text may not hold the {len(tokens)} control tokens of: {'; '.join(sources)}", flush=True)
    return tokens


def check_judgements(data_dir: str | Path, report_dir: str | Path, control_tokens: Iterable[str]) -> int:
    """The suite of ``judgements.jsonl`` (blind A/B judgements) when ``data_dir`` has one, its report in
    ``report_dir``: ValidationFailed naming file, line, record and field; returns the number of
    judgements (0: no file). The validate stage leaves this file out: it trains nothing, and adding
    judgements must not retrain a model. `rlhf label --commit` and the promote stage run it."""
    if not (Path(data_dir) / JUDGEMENTS).exists():
        return 0
    rep = validate_dir(data_dir, only=(JUDGEMENTS,), control_tokens=control_tokens)
    json_path, _ = write_report(rep, report_dir)
    if not rep["success"]:
        n = len(rep["failures"])
        raise ValidationFailed(f"judgements validation failed: {n} problem{'s' if n != 1 else ''} in "
                               f"{Path(data_dir) / JUDGEMENTS} (report: {json_path})\n{format_failures(rep)}")
    return rep["files"][JUDGEMENTS]["records"]


def report_dirs(cfg, data: str | Path | None, report_dir: str | Path | None) -> tuple[Path, Path]:
    """(data folder, report folder) of ``rlhf validate [--data DIR] [--report-dir OUT]``.

    The pipeline's own data (``common.data_dir``, the default) reports where the validate stage does,
    ``outputs/validate``, with the same bytes for the same data. Any other folder (a new batch checked
    before it is merged) reports in ``outputs/validate_other/<folder>-<hash of its path>``: never into
    ``outputs/validate``, a DVC out, which would make DVC rerun the pipeline although its data did not change.
    """
    data_dir = Path(data).resolve() if data else cfg.data_dir
    if data_dir == Path(cfg.data_dir).resolve():
        data_dir = cfg.data_dir
    if report_dir:
        return data_dir, Path(report_dir)
    if data_dir == cfg.data_dir:
        return data_dir, cfg.out_dir("validate")
    import hashlib

    tag = hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]
    return data_dir, cfg.out_dir("validate_other") / f"{data_dir.name or 'root'}-{tag}"


def check_queue_text(path: str | Path, control_tokens: Iterable[str] | None = None) -> None:
    """Refuse a labeling queue (``rlhf sample``'s output) whose prompt or answers hold a control token:
    ranked, such an item would become a comparison the gate refuses. DataError naming the file, line,
    item, field and token (the first; how many there are)."""
    pattern = control_pattern(SMOLLM2_CONTROL_TOKENS if control_tokens is None else control_tokens)
    bad = []
    for lineno, item in iter_jsonl(path):
        texts = [("prompt", item.get("prompt"))] + [(f"answers[{i}]", a) for i, a in enumerate(item.get("answers") or [])
                                                    if isinstance(item.get("answers"), list)]
        for field, text in texts:
            if isinstance(text, str) and (where := _control_token_at(text, pattern)):
                bad.append(f"{path}:{lineno} [{item.get('id')}] {field}: holds {where} (only the chat template may "
                           "write it)")
    if bad:
        more = f" ({len(bad)} texts of the queue hold one)" if len(bad) > 1 else ""
        raise DataError(bad[0] + more)


def _failure(path: Path, line: int | None, rid: str | None, field: str | None, rule: str, message: str) -> dict:
    """One entry of ``report["failures"]``."""
    return {"file": str(path), "line": line, "id": rid, "field": field, "rule": rule, "message": message}


# ---------------------------------------------------------------- reporting


def format_failures(report: dict, limit: int = 50) -> str:
    """One line per failure, ``file:line [id] field: rule — message``; at most ``limit`` lines."""
    lines = []
    for f in report["failures"][:limit]:
        where = f["file"] + (f":{f['line']}" if f["line"] is not None else "")
        rid = f" [{f['id']}]" if f["id"] else ""
        field = f" {f['field']}:" if f["field"] else ""
        lines.append(f"{where}{rid}{field} {f['rule']} — {f['message']}")
    if len(report["failures"]) > limit:
        lines.append(f"... and {len(report['failures']) - limit} more (see report.json)")
    return "\n".join(lines)


def _html(report: dict) -> str:
    """A self-contained HTML page: verdict, per-file expectations, every failure (all text escaped)."""
    e = lambda v: html.escape("" if v is None else str(v))  # noqa: E731
    ok = report["success"]
    n = len(report["failures"])
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Data validation report</title><style>",
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}",
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}",
        ".ok{color:#070}.bad{color:#b00;font-weight:bold}td.msg{font-family:monospace;white-space:pre-wrap}",
        "</style></head><body>",
        f"<h1>Data validation: <span class='{'ok' if ok else 'bad'}'>{'PASSED' if ok else 'FAILED'}</span></h1>",
        f"<p>Data folder: <code>{e(report['data_dir'])}</code> — {n} failing record{'s' if n != 1 else ''}.</p>",
        "<h2>Files and expectations</h2><table><tr><th>file</th><th>records</th><th>rule</th><th>field</th>"
        "<th>expectation</th><th>result</th><th>unexpected</th></tr>",
    ]
    for name, f in report["files"].items():
        for x in f["expectations"]:
            cls, word = ("ok", "pass") if x["success"] else ("bad", "FAIL")
            out.append(f"<tr><td>{e(name)}</td><td>{e(f['records'])}</td><td>{e(x['rule'])}</td><td>{e(x['field'])}</td>"
                       f"<td>{e(x.get('expectation'))}</td><td class='{cls}'>{word}</td><td>{e(x['unexpected_count'])}</td></tr>")
    out.append("</table><h2>Failures</h2>")
    if report["failures"]:
        out.append("<table><tr><th>file</th><th>line</th><th>id</th><th>field</th><th>rule</th><th>message</th></tr>")
        for x in report["failures"]:
            out.append(f"<tr><td>{e(x['file'])}</td><td>{e(x['line'])}</td><td>{e(x['id'])}</td><td>{e(x['field'])}</td>"
                       f"<td>{e(x['rule'])}</td><td class='msg'>{e(x['message'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='ok'>None.</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file + rename (never half a report)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and a readable ``report.html`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    _write_atomic(json_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(html_path, _html(report))
    return json_path, html_path
