import json
import shutil

import pytest

from components.core.errors import ModelError
from components.core.models import load_model_dir


def test_tiny_model_folder_is_complete_and_loads(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "rlhf_base_model.json"} <= names
    meta = json.loads((tiny_model_dir / "rlhf_base_model.json").read_text())
    assert meta["tiny"] is True and meta["model_type"] == "llama" and meta["n_params"] < 5_000_000
    model, tok = load_model_dir(tiny_model_dir)
    # SmolLM2 ships pad == eos; we give padding its own token so end-of-turn is never masked.
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().num_embeddings == len(tok) == 49152
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_no_partial_folder_left_behind(tiny_model_dir):
    leftovers = [p.name for p in tiny_model_dir.parent.iterdir() if p.name.startswith(".base_model.")]
    assert leftovers == []


def test_load_errors_name_the_folder(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        load_model_dir(tmp_path)
    broken = tmp_path / "nosafetensors"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no .safetensors weights"):
        load_model_dir(broken)
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    w = truncated / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelError, match=f"{w}: truncated or corrupt safetensors file"):
        load_model_dir(truncated)


def test_tokenizer_that_does_not_match_the_model_is_refused(tiny_model_dir, tmp_path):
    mismatched = tmp_path / "mismatch"
    shutil.copytree(tiny_model_dir, mismatched)
    cfg = json.loads((mismatched / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (mismatched / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError):
        load_model_dir(mismatched)
