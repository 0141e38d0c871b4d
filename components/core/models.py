"""Model I/O and the helpers every stage that runs a model needs: load and save a model folder,
bf16 where it pays off, and batched generation.

A model folder is a plain Hugging Face folder (safetensors + tokenizer), written by a stage
atomically (complete or absent, never half) and read with checks that name the folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from components.core.encode import pad_batch
from components.core.errors import ModelError


def check_safetensors(folder: Path) -> None:
    """Read the header of every ``*.safetensors`` file of ``folder``: a truncated or corrupt one is a
    ModelError naming the file (before transformers reports it without the name)."""
    from safetensors import safe_open

    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # SafetensorError, OSError: re-raised with the file's path
            raise ModelError(f"{f}: truncated or corrupt safetensors file ({type(e).__name__}: {e})") from e


def save_model_dir(model, tokenizer, out: Path, extra: dict[str, str] | None = None) -> None:
    """Write a model folder beside ``out`` and rename it into place: complete or absent, never half."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model_dir(path: str | Path, *, kind: str = "causal-lm", allow_pickle: bool = False):
    """Load a model folder written by a stage (safetensors only unless allow_pickle); (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: not a model folder (no config.json); did the upstream stage run?")
    if not allow_pickle and not any(path.glob("*.safetensors")):
        raise ModelError(f"{path}: no .safetensors weights (pickle weights need base_model.allow_pickle=true)")
    check_safetensors(path)
    cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = cls.from_pretrained(path, use_safetensors=not allow_pickle)
    except Exception as e:  # safetensors, tokenizers and torch raise their own types; re-raised with the path
        raise ModelError(f"{path}: cannot load the model: {type(e).__name__}: {e}") from e
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ModelError(f"{path}: tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{model.get_input_embeddings().num_embeddings} embeddings: they do not match")
    return model, tokenizer


def bf16_supported() -> bool:
    """bf16 autocast pays off: a CUDA GPU with bf16, or a CPU with AMX tiles (Linux flags).

    Measured here (2026-11-22): on a Xeon with AVX512-BF16 but no AMX, bf16 autocast trains
    SmolLM2 at 180 tokens/s against 340 in fp32, so AVX512-BF16 alone does not count.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def autocast_for(use_bf16: bool):
    """A zero-argument context factory: bf16 autocast on the model's device type, or a no-op."""
    import torch

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16)


def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, *, sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch: int = 16,
             desc: str | None = None, by_length: bool = False) -> list[str]:
    """Decoded responses to tokenised prompts: left-padded batches through HF generate (KV cache),
    greedy unless ``sample``; stops at EOS. ``desc`` shows a progress bar. ``by_length``: batch
    prompts of similar length together (less padding, and a batch ends when its longest answer
    does: similar prompts have similar answers), answers returned in the prompts' order."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    dev = next(model.parameters()).device
    knobs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None) if sample else dict(do_sample=False)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i])) if by_length else range(len(prompt_ids))
    order = list(order)
    out: list[str | None] = [None] * len(prompt_ids)
    for i in tqdm(range(0, len(order), batch), desc=desc, disable=desc is None, unit="batch"):
        rows = order[i: i + batch]
        x, attn = pad_batch([prompt_ids[j] for j in rows], tokenizer.pad_token_id, left=True)
        with torch.no_grad():
            seq = model.generate(input_ids=x.to(dev), attention_mask=attn.to(dev), max_new_tokens=max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **knobs)
        for j, s in zip(rows, seq):
            out[j] = tokenizer.decode(s[x.shape[1]:], skip_special_tokens=True).strip()
    return out


def lora_config(rank: int, alpha: float, targets) -> "LoraConfig":  # noqa: F821
    """The policy's LoRA adapter (peft) as the ppo section sets it (``lora_rank``, ``lora_alpha``,
    ``lora_targets``): no dropout, no bias; ours and TRL's trainers train this same adapter."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")


def merged(model):
    """``model`` as a plain transformers model, what is saved, registered and served: a peft adapter merged
    into the weights it wraps; any other model as it is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def freeze_bottom(model, n_layers: int) -> None:
    """Freeze the embeddings and the first n transformer layers: no backward through them (faster)."""
    if n_layers <= 0:
        return
    base = model.base_model  # the decoder under a causal-LM or sequence-classification head
    base.embed_tokens.requires_grad_(False)
    for layer in base.layers[:n_layers]:
        layer.requires_grad_(False)
