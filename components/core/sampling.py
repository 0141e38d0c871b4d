"""K distinct sampled answers per prompt: what a labeler ranks (``rlhf sample``) and what the rank
stage has the simulated labeler rank (InstructGPT step 2 on the model's own samples)."""

from __future__ import annotations

import re

from components.core.data import CONTROL_CHARS
from components.core.encode import chat_ids, chat_messages
from components.core.models import generate


def clean_answer(text: str) -> str:
    """A generated answer as the data gate accepts it: no control characters, no outer spaces."""
    return re.sub(CONTROL_CHARS, "", text).strip()


def sample_answers(model, tokenizer, prompts: list[str], k: int | list[int], *, system_prompt: str = "",
                   max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                   batch_size: int = 16, max_tries: int = 3, desc: str = "[sample]",
                   by_length: bool = False) -> list[list[str]]:
    """Up to ``k`` distinct non-empty sampled answers per prompt (``k`` one number, or one per prompt).

    Answers that are empty or repeat another answer of the same prompt are drawn again, up to
    ``max_tries`` rounds; a prompt may end with fewer. Seed torch's generator first for a
    reproducible draw.
    """
    ks = [k] * len(prompts) if isinstance(k, int) else list(k)
    ids = [chat_ids(tokenizer, chat_messages(p, system_prompt), add_generation_prompt=True) for p in prompts]
    answers: list[list[str]] = [[] for _ in prompts]
    for round_ in range(max_tries):
        todo = [i for i in range(len(prompts)) for _ in range(ks[i] - len(answers[i]))]
        if not todo:
            break
        texts = generate(model, tokenizer, [ids[i] for i in todo], max_new_tokens, sample=True,
                         temperature=temperature, top_p=top_p, top_k=top_k, batch=batch_size,
                         desc=f"{desc} round {round_ + 1}: {len(todo)} answers", by_length=by_length)
        for i, text in zip(todo, texts):
            text = clean_answer(text)
            if text and text not in answers[i] and len(answers[i]) < ks[i]:
                answers[i].append(text)
    return answers
