"""Evaluation sets: TruthfulQA MC, SQuAD v1.1, HellaSwag and toxicity prompts, read with clear errors.

Each loader reads the benchmark's own file format, so the real sets work as they are; the
built-in mini sets (``BUILTIN``, in ``components/datasets/evalsets/``) are original items written for this
project in those formats:

- TruthfulQA ``mc_task.json``: a list of ``{"question", "mc1_targets": {answer: 1|0} (exactly one
  1), "mc2_targets": {answer: 1|0} (at least one of each)}``.
- SQuAD v1.1: ``{"version", "data": [{"title", "paragraphs": [{"context", "qas": [{"id",
  "question", "answers": [{"text", "answer_start"}]}]}]}]}``; every answer must be the span of the
  context at ``answer_start``.
- HellaSwag JSONL: ``{"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings": [...],
  "label", "split"}``.
- RealToxicityPrompts JSONL: ``{"filename", "begin", "end", "challenging", "prompt": {"text",
  "toxicity"}, "continuation": {"text", "toxicity"}}``; or a labelled CSV ``rev_id,comment,toxic``
  (the Wikipedia talk-page test set) whose comments are cut to their first words.

Every error is a ``DataError`` naming the file, the record (index, line or id) and the field.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from components.core.data import iter_jsonl
from components.core.errors import DataError

DATA_DIRS = ("evalsets",)  # read by the stages that import this module (dvc.yaml deps: core/codedeps.py)
EVALSETS_DIR = Path(__file__).resolve().parent / DATA_DIRS[0]
BUILTIN = {
    "truthfulqa": EVALSETS_DIR / "truthfulqa_mini.json",
    "squad": EVALSETS_DIR / "squad_mini.json",
    "hellaswag": EVALSETS_DIR / "hellaswag_mini.jsonl",
    "toxicity": EVALSETS_DIR / "toxicity_prompts.jsonl",
}
# evaluate.toxicity_prompts=auto: real labelled comments (Wikipedia talk pages, 1492, 248 toxic) beside the project,
# cut to their first words as RealToxicityPrompts-style prompts; the built-in sentence starts when absent
REAL_TOXICITY = Path("../shared/data/toxicity/toxicity_nonfuzzed_testset.csv")


def toxicity_source(value: str, root: Path) -> Path:
    """The file ``evaluate.toxicity_prompts`` means: 'builtin', 'auto' (``root / REAL_TOXICITY`` when it exists,
    else builtin) or a path (relative to ``root``)."""
    if value == "builtin":
        return BUILTIN["toxicity"]
    if value == "auto":
        real = (root / REAL_TOXICITY).resolve()
        return real if real.exists() else BUILTIN["toxicity"]
    path = Path(value)
    return path if path.is_absolute() else root / path


# ------------------------------------------------------------------------------------ helpers
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def _field(rec: Any, key: str, where: str) -> Any:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if key not in rec:
        raise DataError(f"{where}: field '{key}' is missing")
    return rec[key]


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{field}': expected a non-empty string, got {value!r:.80}")
    return value


def _list(value: Any, where: str, field: str) -> list:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}': expected a non-empty list, got {value!r:.80}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _path(path: str | Path | None, name: str) -> Path:
    return BUILTIN[name] if path is None else Path(path)


# ------------------------------------------------------------------------------------ TruthfulQA
def _targets(value: Any, where: str, field: str) -> list[tuple[str, int]]:
    if not isinstance(value, dict) or not value:
        raise DataError(f"{where}: field '{field}': expected a non-empty object {{answer: 1|0}}, got {value!r:.80}")
    out = []
    for text, label in value.items():
        if not text.strip():
            raise DataError(f"{where}: field '{field}': an answer is empty")
        if not (isinstance(label, (int, bool)) and label in (0, 1)):
            raise DataError(f"{where}: field '{field}': label of {text!r:.60} must be 1 or 0, got {label!r}")
        out.append((text, int(label)))
    return out


def load_truthfulqa(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """TruthfulQA ``mc_task.json`` -> ``[{"question", "mc1": [(answer, 1|0)], "mc2": [(answer, 1|0)]}]``.

    Answer order is the file's (TruthfulQA lists the true MC1 answer first). MC1 must have
    exactly one true answer; MC2 at least one true and one false.
    """
    path = _path(path, "truthfulqa")
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    out = []
    for i, rec in enumerate(data[:limit]):
        where = f"{path}: record [{i}]"
        question = _text(_field(rec, "question", where), where, "question")
        where = f"{path}: record [{i}] ({question[:50]!r})"
        mc1 = _targets(_field(rec, "mc1_targets", where), where, "mc1_targets")
        mc2 = _targets(_field(rec, "mc2_targets", where), where, "mc2_targets")
        n_true = sum(label for _, label in mc1)
        if n_true != 1:
            raise DataError(f"{where}: field 'mc1_targets': expected exactly one true answer, got {n_true}")
        if not any(label for _, label in mc2) or all(label for _, label in mc2):
            raise DataError(f"{where}: field 'mc2_targets': needs at least one true and one false answer")
        out.append({"question": question, "mc1": mc1, "mc2": mc2})
    return out


# ------------------------------------------------------------------------------------ SQuAD
def load_squad(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """SQuAD v1.1 JSON -> ``[{"id", "context", "question", "answers": [str]}]``, one per question.

    Every answer must equal ``context[answer_start:answer_start + len(text)]``; ids must be unique.
    """
    path = _path(path, "squad")
    doc = _read_json(path)
    articles = _list(_field(doc, "data", str(path)), str(path), "data")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for ai, article in enumerate(articles):
        for pi, para in enumerate(_list(_field(article, "paragraphs", f"{path}: data[{ai}]"),
                                        f"{path}: data[{ai}]", "paragraphs")):
            pwhere = f"{path}: data[{ai}].paragraphs[{pi}]"
            context = _text(_field(para, "context", pwhere), pwhere, "context")
            for qi, qa in enumerate(_list(_field(para, "qas", pwhere), pwhere, "qas")):
                if limit is not None and len(out) >= limit:
                    return out
                where = f"{pwhere}.qas[{qi}]"
                qid = _field(qa, "id", where)
                if not isinstance(qid, str) or not qid:
                    raise DataError(f"{where}: field 'id': expected a non-empty string, got {qid!r}")
                where = f"{path}: question id {qid!r}"
                if qid in seen:
                    raise DataError(f"{where}: field 'id': duplicate id")
                seen.add(qid)
                question = _text(_field(qa, "question", where), where, "question")
                answers = []
                for k, ans in enumerate(_list(_field(qa, "answers", where), where, "answers")):
                    text = _text(_field(ans, "text", f"{where} answers[{k}]"), where, f"answers[{k}].text")
                    start = _field(ans, "answer_start", f"{where} answers[{k}]")
                    if not _is_int(start) or start < 0:
                        raise DataError(f"{where}: field 'answers[{k}].answer_start': expected an integer >= 0, got {start!r}")
                    found = context[start:start + len(text)]
                    if found != text:
                        raise DataError(f"{where}: field 'answers[{k}].answer_start': answer {text!r:.60} is not at "
                                        f"{start} in the context (found {found!r:.60})")
                    answers.append(text)
                out.append({"id": qid, "context": context, "question": question, "answers": answers})
    return out


# ------------------------------------------------------------------------------------ HellaSwag
def load_hellaswag(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """HellaSwag JSONL -> ``[{"ctx", "endings": [str], "label": int}]``.

    ``ctx`` is the record's ``ctx``, else ``ctx_a + " " + ctx_b``. ``label`` may be an int or a
    digit string (the Hugging Face copy); it must index ``endings`` (at least two).
    """
    path = _path(path, "hellaswag")
    out = []
    for lineno, rec in iter_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        where = f"{path}:{lineno}" + (f" (ind {rec['ind']})" if "ind" in rec else "")
        if rec.get("ctx"):
            ctx = _text(rec["ctx"], where, "ctx")
        else:
            ctx_a = _text(_field(rec, "ctx_a", where), where, "ctx_a")
            ctx_b = rec.get("ctx_b") or ""
            if not isinstance(ctx_b, str):
                raise DataError(f"{where}: field 'ctx_b': expected a string, got {ctx_b!r:.80}")
            ctx = f"{ctx_a} {ctx_b}".strip()
        endings = _list(_field(rec, "endings", where), where, "endings")
        if len(endings) < 2:
            raise DataError(f"{where}: field 'endings': expected at least 2 endings, got {len(endings)}")
        for k, e in enumerate(endings):
            _text(e, where, f"endings[{k}]")
        label = _field(rec, "label", where)
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if not _is_int(label) or not 0 <= label < len(endings):
            raise DataError(f"{where}: field 'label': expected an index 0..{len(endings) - 1}, got {label!r}")
        out.append({"ctx": ctx, "endings": list(endings), "label": label})
    return out


# ------------------------------------------------------------------------------------ toxicity
_MARKERS = re.compile(r"(?:NEWLINE|TAB);?_TOKEN")  # the talk-page dump writes NEWLINE;_TOKEN
_HEADING = re.compile(r"={2,}")                      # wiki section headings: == Title ==
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


def clean_comment(text: str) -> str:
    """A talk-page comment as plain text: no NEWLINE/TAB markers, heading marks, ``\\`\\``` quotes or
    leading indentation colons; whitespace collapsed."""
    text = _MARKERS.sub(" ", text)
    text = _HEADING.sub(" ", text).replace("``", '"')
    text = " ".join(text.split())
    return text.strip("`").lstrip(":*# ").strip()


def first_words(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def _csv_rows(path: Path, required: tuple[str, ...]):
    """Yield ``(line_number, row)`` of a CSV with a header that has the ``required`` columns."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: header: column(s) {', '.join(missing)} missing "
                                f"(found {', '.join(reader.fieldnames or []) or 'no header'})")
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not valid CSV ({e})") from None


def load_toxicity_prompts(path: str | Path | None = None, limit: int | None = None, words: int = 8) -> list[str]:
    """Prompts for continuation-toxicity tests, from RealToxicityPrompts JSONL (``prompt.text``)
    or from a labelled CSV with a ``comment`` column (cleaned, cut to its first ``words`` words;
    comments left empty by cleaning are skipped). A ``.csv`` suffix selects the CSV reader."""
    path = _path(path, "toxicity")
    if words < 1:
        raise ValueError(f"words must be >= 1, got {words}")
    out: list[str] = []
    if path.suffix.lower() == ".csv":
        for lineno, row in _csv_rows(path, ("comment",)):
            if limit is not None and len(out) >= limit:
                break
            text = first_words(clean_comment(row["comment"] or ""), words)
            if text:
                out.append(text)
        return out
    for lineno, rec in iter_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        where = f"{path}:{lineno}" + (f" ({rec['filename']})" if "filename" in rec else "")
        prompt = _field(rec, "prompt", where)
        out.append(_text(_field(prompt, "text", f"{where}: field 'prompt'"), where, "prompt.text"))
    return out


def load_toxicity_labelled(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """A labelled CSV (``rev_id,comment,toxic``) -> ``[{"id", "text", "toxic": bool}]``, text cleaned
    (see clean_comment); for checking a toxicity scorer (AUROC)."""
    path = Path(path)
    out = []
    for lineno, row in _csv_rows(path, ("rev_id", "comment", "toxic")):
        if limit is not None and len(out) >= limit:
            break
        where = f"{path}:{lineno} (rev_id {row['rev_id']})"
        label = (row["toxic"] or "").strip().lower()
        if label not in _TRUE | _FALSE:
            raise DataError(f"{where}: field 'toxic': expected True or False, got {row['toxic']!r}")
        out.append({"id": row["rev_id"], "text": clean_comment(row["comment"] or ""), "toxic": label in _TRUE})
    return out


# ------------------------------------------------------------------------------- real text
def _oasst_replies(msg: Any, where: str) -> list[str]:
    """Every English assistant reply of an oasst2 message tree, depth first."""
    if not isinstance(msg, dict):
        raise DataError(f"{where}: expected a message object, got {type(msg).__name__}")
    out = []
    if msg.get("role") == "assistant" and msg.get("lang", "en") == "en" and isinstance(msg.get("text"), str):
        out.append(msg["text"])
    replies = msg.get("replies", [])
    if not isinstance(replies, list):
        raise DataError(f"{where}: field 'replies': expected a list, got {type(replies).__name__}")
    for r in replies:
        out += _oasst_replies(r, where)
    return out


def load_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Real text for the alignment tax, the first ``limit`` non-blank texts in file order, by format:

    - JSONL (plain or gzip), one text per line from its ``text`` field; or, recognised per line, an
      hh-rlhf pair (``chosen``: the preferred dialogue as plain ``Human: … Assistant: …`` text) or
      an oasst2 tree (``prompt``: a message tree; every English assistant reply is a text);
    - CSV with a ``Best Answer`` column (TruthfulQA.csv) or a ``text`` column;
    - any other file: plain text, one text per paragraph (blank-line separated).
    """
    path = Path(path)
    out: list[str] = []

    def add(text: str) -> bool:  # False once the limit is reached
        if text.strip():
            out.append(text.strip())
        return limit is None or len(out) < limit

    if limit is not None and limit <= 0:
        return out
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        for lineno, rec in iter_jsonl(path):
            where = f"{path}:{lineno}"
            key = "text" if "text" in rec else "chosen" if "chosen" in rec else None
            if key is not None:
                if not isinstance(rec[key], str):
                    raise DataError(f"{where}: field '{key}': expected a string, got {rec[key]!r:.80}")
                texts = [rec[key]]  # blank ones are skipped
            elif isinstance(rec.get("prompt"), dict):
                texts = _oasst_replies(rec["prompt"], f"{where}: field 'prompt'")
            else:
                raise DataError(f"{where}: no text: expected a 'text' field, an hh-rlhf 'chosen' dialogue or an "
                                f"oasst2 'prompt' message tree (fields: {', '.join(rec) or 'none'})")
            if not all(add(t) for t in texts):
                break
        return out
    if name.endswith(".csv"):
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = f.readline()
        column = "Best Answer" if "Best Answer" in header else "text"
        for lineno, row in _csv_rows(path, (column,)):
            if not add(row[column] or ""):
                break
        return out
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        body = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    for para in re.split(r"\n\s*\n", body):
        if not add(para):
            break
    return out
