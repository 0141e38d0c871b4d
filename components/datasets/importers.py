"""Real preference data -> the project's format (``comparisons.jsonl``, ``demonstrations.jsonl``).

Two public sources are supported (``rlhf data import {hh-rlhf,oasst} SRC --out DIR``):

- **Anthropic hh-rlhf** (``import_hh_rlhf``): one ``{"chosen", "rejected"}`` pair of full dialogues
  per line, ``.jsonl`` or gzip-compressed ``.jsonl.gz`` (detected by its magic bytes, not its
  name). Each dialogue is split at its LAST ``"\\n\\nAssistant:"``; the shared prefix is the prompt
  and the two final assistant turns are the responses ``[chosen, rejected]`` with ranks ``[0, 1]``.
  Ids are ``hh-<line number>`` (stable for a given file); hh-rlhf has no user ids.
- **OpenAssistant oasst1/oasst2 message trees** (``import_oasst``): one
  ``{"message_tree_id", "prompt": {message}}`` tree per line, each message with ``message_id``,
  ``user_id``, ``text``, ``role`` ("prompter" | "assistant"), ``deleted``, ``rank`` (sibling
  assistant replies carry a human rank, 0 = best) and ``replies``. Every prompter message (the
  root and deeper turns) with >= 2 usable ranked assistant replies gives one comparison
  (id = the prompter's ``message_id``, ranks re-densified to 0..m, ties kept) and its best reply
  gives one demonstration (id = the reply's ``message_id``).

Prompt rendering (both sources, see ``render_dialogue``): a single human turn is the prompt as it
is (bare text, like the project's own prompts); a multi-turn conversation keeps the earlier turns
as context, rendered readably in hh-rlhf's own labels and ending with the last human turn::

    Human: <turn 1>

    Assistant: <reply 1>

    Human: <turn 2>

The downstream stages put the whole prompt into ONE user message of the chat template, so the
model sees the conversation so far as the text of the request.

``user_id`` (oasst only) is the author of the conversation -- the user who wrote its root prompter
message, the person who asked -- on every comparison and demonstration of the tree, deeper turns
included: InstructGPT splits train/eval by the user who wrote the prompt, and a deeper turn's prompt
holds the whole conversation so far, so keying it by its own (often different) writer would put one
conversation on both sides (21 of the 91 conversations of ``../shared/data/oasst2`` did). A tree whose
root has no user gets none, and hh-rlhf has none: such records are grouped by conversation instead
(``data.conversation_key``, the first human turn), so the same question never lands on both sides.

Cleaning, so the output passes the validation gate (``components/datasets/rules.py``): texts are
stripped of surrounding whitespace and invisible format characters (``rules.visible_strip``); ``\\r\\n`` and lone ``\\r``, vertical tab, form feed and NEL
become ``\\n``; every other control character of ``rules.CONTROL_CHARS`` (C0 but tab and
newline, DEL, C1), every Unicode non-character and every byte-order mark inside text
(``rules.NONCHARACTERS``) is removed. Prompts or responses longer than ``max_chars`` (default 4000 =
params.yaml ``validate.max_prompt_chars`` / ``max_response_chars``) are left out and counted, and so
are texts that hold a control token of the default tokenizer (``<|im_start|>`` ...,
``core.encode.SMOLLM2_CONTROL_TOKENS``: only a chat template may write those).
Every record that is left out is counted in ``stats["skipped"]`` under its reason; malformed input
(not JSON, a missing or mistyped field, a lone surrogate escape such as ``\\ud800``) raises
``DataError`` naming the file, the line and the field.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.core.data import ASSISTANT, HUMAN, K_MAX, K_MIN, iter_jsonl
from components.core.errors import DataError
from components.core.encode import SMOLLM2_CONTROL_TOKENS, control_pattern
from components.datasets.rules import CONTROL_CHARS, NONCHARACTERS, visible_strip

DEFAULT_MAX_CHARS = 4000
_TURN = re.compile(r"\n\n(Human|Assistant):")
_CONTROL = re.compile(f"{CONTROL_CHARS}|{NONCHARACTERS}")
_CONTROL_TOKEN = control_pattern(SMOLLM2_CONTROL_TOKENS)
_LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x85]")  # -> "\n" (kept as line breaks)

__all__ = ["import_hh_rlhf", "import_oasst", "import_oasst_all", "render_dialogue", "clean_text", "DEFAULT_MAX_CHARS"]


# ---------------------------------------------------------------- shared helpers


def clean_text(text: str) -> tuple[str, int]:
    """``(cleaned, n_changed)``: line-break controls -> ``\\n``, other control characters, non-characters
    and byte-order marks removed, surrounding whitespace and invisible format characters stripped (a text of
    only zero-width characters becomes empty); ``n_changed`` counts the characters touched."""
    n = 0

    def _nl(m: re.Match) -> str:
        nonlocal n
        n += 1
        return "\n"

    text = _LINE_BREAKS.sub(_nl, text)
    text, removed = _CONTROL.subn("", text)
    return visible_strip(text), n + removed


def render_dialogue(turns: list[tuple[str, str]]) -> str:
    """The prompt text of a conversation ``[(role, text), ...]`` (role "Human" | "Assistant").

    One human turn alone -> its bare text; anything longer -> ``"Human: ...\\n\\nAssistant: ..."``
    (turns joined by a blank line, the same labels as hh-rlhf).
    """
    if len(turns) == 1 and turns[0][0] == HUMAN:
        return turns[0][1]
    return "\n\n".join(f"{role}: {text}" if text else f"{role}:" for role, text in turns)


class _Cleaner:
    """clean_text plus the counts that go into ``stats["control_chars"]``."""

    def __init__(self) -> None:
        self.texts = 0
        self.chars = 0

    def __call__(self, text: str) -> str:
        out, n = clean_text(text)
        if n:
            self.texts += 1
            self.chars += n
        return out

    def stats(self) -> dict[str, int]:
        return {"texts": self.texts, "chars": self.chars}


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")


def _iter_source(path: Path, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for the first ``limit`` non-blank lines (data.iter_jsonl's errors)."""
    for n, item in enumerate(iter_jsonl(path)):
        if limit is not None and n >= limit:
            return
        yield item


def _field(rec: dict, name: str, kind: type | tuple[type, ...], where: str, *, label: str | None = None,
           required: bool = True, default: Any = None) -> Any:
    """``rec[name]`` checked against ``kind``; DataError ``"<where>: field '<label>' ..."`` if not."""
    label = label or name
    if name not in rec or rec[name] is None:
        if required:
            raise DataError(f"{where}: field '{label}' is missing" if name not in rec else
                            f"{where}: field '{label}' is null")
        return default
    v = rec[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise DataError(f"{where}: field '{label}' must be {want}, got {_TYPE_NAMES.get(type(v), type(v).__name__)}")
    return v


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object",
               float: "a number", type(None): "null"}


def _dense(ranks: list[int]) -> list[int]:
    """Ranks re-densified to 0..m-1 (order and ties kept): [3, 0, 3, 7] -> [1, 0, 1, 2]."""
    order = {r: i for i, r in enumerate(sorted(set(ranks)))}
    return [order[r] for r in ranks]


def _k_hist(comparisons: list[dict]) -> dict[str, int]:
    c = Counter(len(r["responses"]) for r in comparisons)
    return {str(k): c[k] for k in sorted(c)}


# ---------------------------------------------------------------- hh-rlhf


def _hh_split(dialogue: str) -> tuple[str, str] | None:
    """``(prefix, final response)`` at the LAST ``"\\n\\nAssistant:"``; None when there is none."""
    prefix, sep, response = dialogue.rpartition("\n\nAssistant:")
    return (prefix, response) if sep else None


def _hh_turns(prefix: str, clean: _Cleaner) -> list[tuple[str, str]]:
    """The turns of an hh-rlhf dialogue prefix; text before the first label becomes a human turn."""
    parts = _TURN.split(prefix)
    turns = []
    head = clean(parts[0])
    if head:
        turns.append((HUMAN, head))
    for role, text in zip(parts[1::2], parts[2::2]):
        turns.append((role, clean(text)))
    return turns


def import_hh_rlhf(
    src: str | Path, *, limit: int | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Anthropic hh-rlhf pairs -> comparisons (K = 2, ranks [0, 1] = [chosen, rejected]).

    ``src``: a ``.jsonl`` or ``.jsonl.gz`` file of ``{"chosen", "rejected"}`` dialogues;
    ``limit``: stop after this many source records (None = all); ``max_chars``: longest prompt or
    response kept (longer pairs are skipped).

    Returns ``(comparisons, stats)``; stats = ``{"format", "source", "read", "imported",
    "comparisons", "k_histogram", "multi_turn", "skipped": {reason: n}, "control_chars":
    {"texts", "chars"}}``. Skip reasons: ``no_assistant_turn``, ``prompt_mismatch`` (chosen and
    rejected dialogues differ before the last assistant turn), ``empty_prompt``,
    ``empty_response``, ``identical_responses``, ``prompt_too_long``, ``response_too_long``,
    ``control_token``.
    Raises DataError (file:line: field) for malformed input.
    """
    _check_limit(limit)
    path = Path(src)
    clean = _Cleaner()
    skipped: Counter[str] = Counter()
    comparisons: list[dict[str, Any]] = []
    read = multi_turn = 0
    for lineno, rec in _iter_source(path, limit):
        read += 1
        where = f"{path}:{lineno}"
        chosen = _field(rec, "chosen", str, where)
        rejected = _field(rec, "rejected", str, where)
        a, b = _hh_split(chosen), _hh_split(rejected)
        if a is None or b is None:
            skipped["no_assistant_turn"] += 1
            continue
        if a[0] != b[0]:
            skipped["prompt_mismatch"] += 1
            continue
        turns = _hh_turns(a[0], clean)
        prompt = render_dialogue(turns)
        responses = [clean(a[1]), clean(b[1])]
        if not prompt:
            skipped["empty_prompt"] += 1
        elif not all(responses):
            skipped["empty_response"] += 1
        elif responses[0] == responses[1]:
            skipped["identical_responses"] += 1
        elif len(prompt) > max_chars:
            skipped["prompt_too_long"] += 1
        elif max(map(len, responses)) > max_chars:
            skipped["response_too_long"] += 1
        elif any(_CONTROL_TOKEN.search(t) for t in (prompt, *responses)):
            skipped["control_token"] += 1
        else:
            multi_turn += len(turns) > 1
            comparisons.append({"id": f"hh-{lineno}", "prompt": prompt, "responses": responses, "ranks": [0, 1]})
    stats = {
        "format": "hh-rlhf",
        "source": str(path),
        "read": read,
        "imported": len(comparisons),
        "comparisons": len(comparisons),
        "k_histogram": _k_hist(comparisons),
        "multi_turn": multi_turn,
        "skipped": dict(sorted(skipped.items())),
        "control_chars": clean.stats(),
    }
    return comparisons, stats


# ---------------------------------------------------------------- OpenAssistant


def _oasst_message(msg: Any, where: str, label: str) -> dict[str, Any]:
    """The fields the importer uses of one message, type-checked (DataError names the field path)."""
    if not isinstance(msg, dict):
        raise DataError(f"{where}: field '{label}' must be an object, got {_TYPE_NAMES.get(type(msg), type(msg).__name__)}")
    role = _field(msg, "role", str, where, label=f"{label}.role")
    if role not in ("prompter", "assistant"):
        raise DataError(f"{where}: field '{label}.role' must be 'prompter' or 'assistant', got {role!r}")
    user = _field(msg, "user_id", str, where, label=f"{label}.user_id", required=False)
    return {
        "message_id": _field(msg, "message_id", str, where, label=f"{label}.message_id"),
        "role": role,
        "text": _field(msg, "text", str, where, label=f"{label}.text"),
        "user_id": user or None,
        "deleted": _field(msg, "deleted", bool, where, label=f"{label}.deleted", required=False, default=False),
        "rank": _field(msg, "rank", int, where, label=f"{label}.rank", required=False),
        "replies": _field(msg, "replies", list, where, label=f"{label}.replies", required=False, default=[]),
    }


def import_oasst(
    src: str | Path, *, limit: int | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """OpenAssistant message trees -> comparisons (K = 2..9) and demonstrations (``import_oasst_all``
    without the RL prompts)."""
    comparisons, demos, _prompts, stats = import_oasst_all(src, limit=limit, max_chars=max_chars)
    return comparisons, demos, stats


def import_oasst_all(
    src: str | Path, *, limit: int | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """OpenAssistant message trees -> comparisons (K = 2..9), demonstrations and RL prompts.

    RL prompts: every prompter message that gives no comparison because it has fewer than 2 ranked
    replies (and is not deleted, nor in a deleted conversation, has a usable text and no control
    token): ``{"id": message_id, "prompt", "user_id"}``, the prompt rendered as for comparisons. So the
    policy is trained and evaluated on questions its reward model never saw ranked, as InstructGPT's
    PPO prompts are apart from its RM's.

    For every prompter message (any depth), its assistant replies that are not deleted, have a
    rank, a non-empty text of at most ``max_chars`` characters and a text not already given by a
    better-ranked sibling are the candidates; with >= 2 of them (at most the best ``K_MAX`` = 9,
    by rank) and not all tied, one comparison ``{"id": prompter message_id, "prompt", "responses",
    "ranks", "user_id": the root prompter's user_id}`` is emitted, responses in tree order and ranks
    re-densified to 0..m (ties kept), plus one demonstration ``{"id": best reply's message_id,
    "prompt", "response", "user_id"}``. The prompt of a deeper prompter turn is the conversation
    from the root (see ``render_dialogue``).

    ``limit``: stop after this many trees (None = all). Returns ``(comparisons, demonstrations,
    prompts, stats)``; stats = ``{"format", "source", "read" (trees), "duplicate_trees", "prompter_messages", "imported",
    "comparisons", "k_histogram", "multi_turn", "demonstrations", "rl_prompts", "skipped": {reason: n} (one
    reason per prompter message without a comparison), "replies_dropped": {reason: n},
    "control_chars": {"texts", "chars"}}``. Skip reasons: ``duplicate_message_id`` (a tree listed
    again: the first occurrence wins), ``prompter_deleted``,
    ``deleted_in_context`` (an earlier turn of the conversation was deleted),
    ``fewer_than_2_ranked_replies``, ``all_tied``, ``empty_prompt``, ``prompt_too_long``, ``control_token``
    (checked in this order, so the last three count only groups that would otherwise have been imported);
    a reply holding a control token is dropped (``replies_dropped["control_token"]``). Raises DataError
    (file:line: field path) for malformed input.
    """
    _check_limit(limit)
    path = Path(src)
    clean = _Cleaner()
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    comparisons: list[dict[str, Any]] = []
    demos: list[dict[str, Any]] = []
    prompts: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    tree_ids: set[str] = set()
    read = prompters = multi_turn = duplicate_trees = 0
    for lineno, tree in _iter_source(path, limit):
        read += 1
        tree_id = tree.get("message_tree_id")
        if isinstance(tree_id, str):
            duplicate_trees += tree_id in tree_ids
            tree_ids.add(tree_id)
        where = f"{path}:{lineno}" + (f" (tree {tree_id})" if isinstance(tree_id, str) else "")
        _field(tree, "prompt", dict, where)
        author = None  # the root prompter's user: the split unit of every record of the tree
        # Depth-first walk with an explicit stack: (message, field path, context turns, context deleted).
        stack: list[tuple[Any, str, list[tuple[str, str]], bool]] = [(tree["prompt"], "prompt", [], False)]
        while stack:
            raw, label, context, ctx_deleted = stack.pop()
            msg = _oasst_message(raw, where, label)
            if label == "prompt":
                author = msg["user_id"] if msg["role"] == "prompter" else None
            text = clean(msg["text"])
            role = HUMAN if msg["role"] == "prompter" else ASSISTANT
            turns = context + [(role, text)]
            deleted = ctx_deleted or msg["deleted"]
            for i, child in reversed(list(enumerate(msg["replies"]))):
                stack.append((child, f"{label}.replies[{i}]", turns, deleted))
            if msg["role"] != "prompter":
                continue
            prompters += 1
            mid = msg["message_id"]
            if mid in seen_ids:  # the same tree listed again (real files repeat trees): first one wins
                skipped["duplicate_message_id"] += 1
                continue
            seen_ids.add(mid)
            if msg["deleted"]:
                skipped["prompter_deleted"] += 1
                continue
            if ctx_deleted:
                skipped["deleted_in_context"] += 1
                continue
            # Candidate replies: (rank, tree order, message_id, cleaned text).
            cands = []
            for i, child in enumerate(msg["replies"]):
                r = _oasst_message(child, where, f"{label}.replies[{i}]")
                if r["role"] != "assistant":
                    continue
                if r["deleted"]:
                    dropped["deleted"] += 1
                elif r["rank"] is None:
                    dropped["unranked"] += 1
                else:
                    # clean_text, not clean: this text is counted when its own node is walked.
                    cands.append((r["rank"], i, r["message_id"], clean_text(r["text"])[0]))
            kept, texts = [], set()
            for rank, i, rid, rtext in sorted(cands):  # best first: a duplicate text keeps its best rank
                if not rtext:
                    dropped["empty"] += 1
                elif len(rtext) > max_chars:
                    dropped["too_long"] += 1
                elif _CONTROL_TOKEN.search(rtext):
                    dropped["control_token"] += 1
                elif rtext in texts:
                    dropped["duplicate_text"] += 1
                elif len(kept) >= K_MAX:
                    dropped["beyond_k_max"] += 1
                else:
                    texts.add(rtext)
                    kept.append((rank, i, rid, rtext))
            if len(kept) < K_MIN:
                skipped["fewer_than_2_ranked_replies"] += 1
                rl_prompt = render_dialogue(turns)
                if text and len(rl_prompt) <= max_chars and not _CONTROL_TOKEN.search(rl_prompt):
                    prompts.append({"id": mid, "prompt": rl_prompt, **({"user_id": author} if author else {})})
                continue
            if len({k[0] for k in kept}) == 1:
                skipped["all_tied"] += 1
                continue
            prompt = render_dialogue(turns)
            if not text:
                skipped["empty_prompt"] += 1
                continue
            if len(prompt) > max_chars:
                skipped["prompt_too_long"] += 1
                continue
            if _CONTROL_TOKEN.search(prompt):
                skipped["control_token"] += 1
                continue
            best = kept[0]  # lowest rank, then first in tree order
            kept.sort(key=lambda k: k[1])  # responses in tree order
            comp: dict[str, Any] = {"id": mid, "prompt": prompt, "responses": [k[3] for k in kept],
                                    "ranks": _dense([k[0] for k in kept])}
            demo: dict[str, Any] = {"id": best[2], "prompt": prompt, "response": best[3]}
            if author:
                comp["user_id"] = demo["user_id"] = author
            comparisons.append(comp)
            demos.append(demo)
            multi_turn += len(turns) > 1
    stats = {
        "format": "oasst",
        "source": str(path),
        "read": read,
        "duplicate_trees": duplicate_trees,
        "prompter_messages": prompters,
        "imported": len(comparisons),
        "comparisons": len(comparisons),
        "k_histogram": _k_hist(comparisons),
        "multi_turn": multi_turn,
        "demonstrations": len(demos),
        "rl_prompts": len(prompts),
        "skipped": dict(sorted(skipped.items())),
        "replies_dropped": dict(sorted(dropped.items())),
        "control_chars": clean.stats(),
    }
    return comparisons, demos, prompts, stats
