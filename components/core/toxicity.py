"""Pluggable toxicity scorers: texts -> P(toxic) in 0..1.

- ``"profanity-check"`` (the default): alt-profanity-check's bundled TF-IDF + logistic
  regression; offline, ~67k texts/s; catches insults and profanity, misses hate speech without
  swear words.
- a path to a Hugging Face sequence-classification model folder (safetensors weights only, no
  remote code): P(toxic) from the label named "toxic" in ``id2label`` (else the one containing
  "toxic", else index 1), by softmax, or by sigmoid for multi-label / single-logit heads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.core.errors import ToxicityScorerError

DEFAULT_SCORER = "profanity-check"
Scorer = Callable[[list[str]], np.ndarray]


def make_scorer(spec: str = DEFAULT_SCORER, batch_size: int = 32, device: str | None = None) -> Scorer:
    """A function ``texts -> np.ndarray`` of P(toxic), one float per text (see the module doc)."""
    if spec == DEFAULT_SCORER:
        from profanity_check import predict_prob

        def score(texts: list[str]) -> np.ndarray:
            texts = list(texts)
            return np.asarray(predict_prob(texts), dtype=float) if texts else np.zeros(0)

        return score
    return _hf_scorer(Path(spec), batch_size, device)


def toxic_label_index(id2label: dict[int, str]) -> int:
    """The output index of the "toxic" class: named exactly so, else containing "toxic" (not
    "non-toxic"/"not toxic"), else 1 (the usual positive class), else 0 for a single logit."""
    labels = {int(i): str(name).lower().strip() for i, name in id2label.items()}
    for i, name in sorted(labels.items()):
        if name in ("toxic", "toxicity"):
            return i
    for i, name in sorted(labels.items()):
        if "toxic" in name and not name.startswith(("non", "not")):
            return i
    return 1 if len(labels) > 1 else 0


def _hf_scorer(path: Path, batch_size: int, device: str | None) -> Scorer:
    if not path.is_dir():
        raise ToxicityScorerError(
            f"toxicity scorer {str(path)!r}: neither {DEFAULT_SCORER!r} nor a model folder (no such directory)")
    if not (path / "config.json").is_file():
        raise ToxicityScorerError(f"toxicity scorer {path}: not a Hugging Face model folder (no config.json)")
    if not any(path.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "no weights"
        raise ToxicityScorerError(f"toxicity scorer {path}: no .safetensors weights ({found}); "
                                  "only safetensors are loaded (pickle files can run code)")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        raise ToxicityScorerError(f"toxicity scorer {path}: cannot load a sequence-classification model: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    index = toxic_label_index(model.config.id2label)
    max_length = min(512, tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512))
    sigmoid = model.config.problem_type == "multi_label_classification" or model.config.num_labels == 1

    def score(texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt").to(device)
                logits = model(**batch).logits.float()
                probs = torch.sigmoid(logits[:, index]) if sigmoid else torch.softmax(logits, -1)[:, index]
                out.append(probs.cpu().numpy())
        return np.concatenate(out).astype(float) if out else np.zeros(0)

    return score
