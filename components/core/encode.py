"""Text -> token ids, the one way every stage does it (the model's chat template), and ids -> padded tensors.

Every encoder of data text lives here, so that SFT, the reward model, DPO, PPO, evaluation and
sampling feed a model the same ids for the same text.

**Control tokens.** A tokenizer's control tokens are its special tokens and its other added tokens
(``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>`` ...; whitespace-only added tokens, which some
vocabularies use for runs of spaces, are ordinary text). Only the chat template may write them: a
prompt or an answer that holds the string ``<|im_start|>system`` must not open a system turn. The
data gate refuses such text (``components/datasets/rules.py``, rule ``no_control_tokens``); the
encoders here make sure that, should the gate be bypassed, content text still never yields a
control id: text without a control-token string is encoded exactly as before (the same ids), and
text with one is encoded with the control-token strings as plain characters (``_text_ids``).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable
from pathlib import Path

from components.core.errors import DataError, ModelError

# The added tokens of the packaged SmolLM2-135M-Instruct tokenizer (the default base model), all of them
# special: end of text (also the pipeline's pad token), the ChatML turn markers, and the markers of its
# code pretraining data. The data gate refuses them when no tokenizer file is at hand (validate runs
# before base_model); tests/test_control_tokens.py checks this list against the real tokenizer's files.
SMOLLM2_CONTROL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
    "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>",
)
# Marks the place of message i in a rendering of the chat template (Unicode private-use plane 15).
_SLOT = "\U000f8000{}\U000f8001"


def chat_messages(prompt: str, system_prompt: str = "") -> list[dict[str, str]]:
    """A prompt as chat messages: an optional system message, then the user turn."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": prompt}]


def chat_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """Chat messages -> token ids through the model's chat template, as a plain list.

    Control ids come from the template only. The template's own ids are kept as they are when no
    message text holds a control-token string and the ids hold as many control tokens as the
    template writes (more would come from text next to the template's, or from a normaliser);
    otherwise the chat is encoded piece by piece: the template's text as usual, each message's text
    with ``_text_ids``.
    """
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                        return_dict=False)
    ids = ids if isinstance(ids, list) else list(ids["input_ids"])  # some tokenizers return a BatchEncoding
    guard = _guard(tokenizer)
    if not guard.ids:
        return ids
    clean = not any(guard.pattern.search(m["content"]) for m in messages if isinstance(m.get("content"), str))
    n_control = guard.count_ids(ids)
    key = (tuple(m.get("role") for m in messages), add_generation_prompt, tokenizer.chat_template)
    if clean and guard.template_counts.get(key) == n_control:
        return ids  # the usual case: exactly the ids the template gives
    skeleton = _skeleton(tokenizer, messages, add_generation_prompt)
    written = len(guard.pattern.findall(skeleton))  # the control tokens the template itself writes
    guard.template_counts[key] = written
    if clean and n_control == written:
        return ids
    return _chat_ids_by_piece(tokenizer, messages, skeleton, guard)


def encode_prompts(tokenizer, prompts: list[str], system_prompt: str, max_len: int) -> tuple[list[list[int]], int]:
    """Prompts -> chat-template ids ending with the assistant header, left-truncated to max_len;
    returns (ids, how many were truncated)."""
    out, cut = [], 0
    for p in prompts:
        ids = chat_ids(tokenizer, chat_messages(p, system_prompt), add_generation_prompt=True)
        cut += len(ids) > max_len
        out.append(ids[-max_len:])
    return out, cut


def encode_pair(tokenizer, prompt: str, response: str, system_prompt: str, max_length: int) -> tuple[list[int], bool]:
    """Chat-template ids of prompt + answer, left-truncated to max_length; returns (ids, truncated?).

    Left truncation keeps the answer's end, which is what a reward head reads (the last token).
    """
    ids = chat_ids(tokenizer, chat_messages(prompt, system_prompt) + [{"role": "assistant", "content": response}])
    return (ids[-max_length:], True) if len(ids) > max_length else (ids, False)


def encode_texts(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Plain texts (no chat template) -> ids cut to max_len, each ending with EOS."""
    return [_text_ids(tokenizer, t)[: max_len - 1] + [tokenizer.eos_token_id] for t in texts]


def answer_ids(tokenizer, text: str) -> list[int]:
    """An answer's tokens as they follow the assistant header (no special tokens added)."""
    return _text_ids(tokenizer, text)


def pad_batch(seqs: list[list[int]], pad_id: int, left: bool = False):
    """Token-id lists -> (ids, attention_mask), both (N, longest); right-padded, or left for generation."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        attn[i, cols] = 1
    return ids, attn


# ---------------------------------------------------------------------------------- control tokens
def is_control(content: str, special: bool) -> bool:
    """The project's rule: an added token is a control token when it is special or not whitespace only."""
    return bool(content) and (special or not content.isspace())


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The control tokens of a loaded tokenizer (see the module docstring), longest first."""
    specials = set(tokenizer.all_special_tokens)
    found = {t.content for t in tokenizer.added_tokens_decoder.values()
             if is_control(t.content, t.special or t.content in specials)}
    return _longest_first(found | {t for t in specials if t})


def control_pattern(tokens: Iterable[str]) -> re.Pattern:
    """A regex matching any of ``tokens`` (longest first, so a token wins over the tokens inside it)."""
    tokens = _longest_first(tokens)
    return re.compile("|".join(map(re.escape, tokens)) if tokens else "(?!)")


def _longest_first(tokens: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(tokens), key=lambda t: (-len(t), t)))


class _Guard:
    """A tokenizer's control tokens: their strings (a regex) and their ids."""

    def __init__(self, tokenizer):
        self.n_added = len(tokenizer.added_tokens_decoder)
        self.tokens = control_tokens(tokenizer)
        self.pattern = control_pattern(self.tokens)
        vocab = tokenizer.get_added_vocab()  # added token -> id
        ids = {vocab[t] for t in self.tokens if t in vocab}
        for t in set(self.tokens) - set(vocab):  # a special token of the base vocabulary
            i = tokenizer.convert_tokens_to_ids(t)
            if i is not None and (i != tokenizer.unk_token_id or t == tokenizer.unk_token):
                ids.add(i)
        self.ids = frozenset(ids)
        self.template_counts: dict[tuple, int] = {}  # (roles, add_generation_prompt, template) -> control tokens written


    def count_ids(self, ids: list[int]) -> int:
        return sum(1 for i in ids if i in self.ids)


_GUARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _guard(tokenizer) -> _Guard:
    """The tokenizer's _Guard, computed once (again when tokens were added to it since)."""
    g = _GUARDS.get(tokenizer)
    if g is None or g.n_added != len(tokenizer.added_tokens_decoder):
        g = _GUARDS[tokenizer] = _Guard(tokenizer)
    return g


def _skeleton(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The chat template's text for ``messages`` with message i's content replaced by slot i."""
    slotted = [{**m, "content": _SLOT.format(i)} if isinstance(m.get("content"), str) else m
               for i, m in enumerate(messages)]
    return tokenizer.apply_chat_template(slotted, add_generation_prompt=add_generation_prompt, tokenize=False)


def _chat_ids_by_piece(tokenizer, messages: list[dict[str, str]], skeleton: str, guard: _Guard) -> list[int]:
    """The template's text between the messages encoded as usual (its control tokens are ids), each
    message's text with ``_text_ids`` (never a control id)."""
    ids: list[int] = []
    rest = skeleton
    for i, m in enumerate(messages):
        slot = _SLOT.format(i)
        if slot not in rest:
            if slot in skeleton:
                raise ModelError("the chat template renders the messages out of order: text holding a control token "
                                 "cannot be encoded safely with it")
            continue  # the template leaves this message out: its text cannot reach the ids
        before, _, rest = rest.partition(slot)
        if slot in rest:
            raise ModelError("the chat template writes a message's text twice: text holding a control token cannot "
                             "be encoded safely with it")
        ids += tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
        ids += _text_ids(tokenizer, m["content"], guard)
    return ids + (tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])


def _text_ids(tokenizer, text: str, guard: _Guard | None = None) -> list[int]:
    """``text`` as plain text: its usual ids when they hold no control id; else the text is cut in two
    and each side is encoded the same way: before its first control-token string, or after the first
    character of it when the text starts with one (or in half, when the control id came from elsewhere,
    e.g. a normaliser)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    guard = guard or _guard(tokenizer)
    if guard.ids.isdisjoint(ids):
        return ids
    if len(text) < 2:
        raise DataError(f"the text {text!r} is by itself a control token of this tokenizer: it cannot be encoded as text")
    m = guard.pattern.search(text)
    cut = len(text) // 2 if m is None else m.start() or 1
    return _text_ids(tokenizer, text[:cut], guard) + _text_ids(tokenizer, text[cut:], guard)


# ------------------------------------------------------------------ control tokens from tokenizer files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                 "additional_special_tokens", "extra_special_tokens")


def file_control_tokens(files: Iterable[Path]) -> set[str]:
    """The control tokens a tokenizer's files declare, read as JSON (no tokenizer, no model is loaded):
    ``added_tokens`` of tokenizer.json, ``added_tokens_decoder`` and the special-token entries of
    tokenizer_config.json and special_tokens_map.json. A file that is not JSON is a ModelError naming it."""
    found: set[str] = set()
    for path in files:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: cannot read the tokenizer file ({e})") from None
        if not isinstance(doc, dict):
            raise ModelError(f"{path}: not a tokenizer file (expected a JSON object)")
        entries = list(doc.get("added_tokens") or []) + list((doc.get("added_tokens_decoder") or {}).values())
        for t in entries:
            if isinstance(t, dict) and isinstance(t.get("content"), str) and is_control(t["content"], bool(t.get("special"))):
                found.add(t["content"])
        for key in _SPECIAL_KEYS:
            found |= {t for t in _strings(doc.get(key)) if t}
    return found


def _strings(value) -> list[str]:
    """Token strings in a special-token entry: a string, ``{"content": ...}``, or a list / dict of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [value["content"]] if isinstance(value.get("content"), str) else \
            [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def tokenizer_files(source: str | Path) -> list[Path]:
    """The tokenizer files of a model folder, or of a Hugging Face id already in the local cache
    (nothing is downloaded); [] when there are none."""
    folder = Path(source)
    if folder.is_dir():
        return [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if str(source).count("/") != 1:  # not a Hugging Face id ('org/name'), e.g. 'smollm2'
        return []
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    found = []
    for f in TOKENIZER_FILES:
        try:
            hit = try_to_load_from_cache(str(source), f)
        except ValueError:  # not a valid repository id
            return []
        if isinstance(hit, str):
            found.append(Path(hit))
    return found


def gate_control_tokens(source: str, base_model_dir: Path | None = None) -> tuple[tuple[str, ...], list[str]]:
    """The control tokens the data gate refuses, and where they came from: the packaged SmolLM2 list
    (always), plus the tokenizer files of ``base_model.source`` (a folder, or a Hugging Face id in the
    local cache), plus those of ``base_model_dir`` (``outputs/base_model``) when that folder was built
    from the same source. Only tokenizer files are read, never a model."""
    tokens = set(SMOLLM2_CONTROL_TOKENS)
    sources = ["the packaged SmolLM2-135M-Instruct tokenizer (built-in list)"]
    files = tokenizer_files(source)
    if files:
        tokens |= file_control_tokens(files)
        sources.append(f"the tokenizer files of base_model.source={source}")
    if base_model_dir is not None and (base_model_dir / "rlhf_base_model.json").is_file():
        try:
            built_from = json.loads((base_model_dir / "rlhf_base_model.json").read_text()).get("source")
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{base_model_dir / 'rlhf_base_model.json'}: cannot read it ({e})") from None
        if built_from == source and (files := tokenizer_files(base_model_dir)):
            tokens |= file_control_tokens(files)
            sources.append(f"the tokenizer files of {base_model_dir}")
    return _longest_first(tokens), sources
