"""Text -> token ids, the one way every stage does it (the model's chat template), and ids -> padded tensors.

Every encoder of data text lives here, so that SFT, the reward model, DPO, PPO, evaluation and
sampling feed a model the same ids for the same text.
"""

from __future__ import annotations


def chat_messages(prompt: str, system_prompt: str = "") -> list[dict[str, str]]:
    """A prompt as chat messages: an optional system message, then the user turn."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": prompt}]


def chat_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """Chat messages -> token ids through the model's chat template, as a plain list."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                        return_dict=False)
    return ids if isinstance(ids, list) else list(ids["input_ids"])  # some tokenizers return a BatchEncoding


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
    return [tokenizer(t, add_special_tokens=False)["input_ids"][: max_len - 1] + [tokenizer.eos_token_id] for t in texts]


def answer_ids(tokenizer, text: str) -> list[int]:
    """An answer's tokens as they follow the assistant header (no special tokens added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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
