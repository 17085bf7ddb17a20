"""all-MiniLM-L6-v2, the embedded backend's text encoder, in NumPy: its packaged safetensors weights and its
tokenizer.json (Hugging Face `tokenizers`), a BERT forward pass (6 layers, 384 wide, 12 heads, post-norm, exact GELU)
and mean pooling over the tokens, as sentence-transformers computes it. No torch: relabel, search and topics load in
a fraction of a second, and classify no longer imports torch for its labels."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

MAX_TOKENS = 256  # the model's sentence_bert_config.json: longer texts are truncated, as sentence-transformers does
# Abramowitz and Stegun 7.1.26: erf within 1.5e-7 (NumPy has none, and the exact GELU of BERT needs it).
_ERF = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
_ERF_P = np.float32(0.3275911)


def _erf(x: np.ndarray) -> np.ndarray:
    t = 1 / (1 + _ERF_P * np.abs(x))
    polynomial = t * (_ERF[0] + t * (_ERF[1] + t * (_ERF[2] + t * (_ERF[3] + t * _ERF[4]))))
    return np.sign(x) * (1 - polynomial * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(0.5 ** 0.5)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


class MiniLM:
    """Sentence vectors (not normalized) from a sentence-transformers BERT folder with mean pooling."""

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.heads, self.layers, self.eps = (config["num_attention_heads"], config["num_hidden_layers"],
                                             config["layer_norm_eps"])
        self.weights = load_file(str(folder / "model.safetensors"))
        self._transposed: dict[str, np.ndarray] = {}
        self.dim = config["hidden_size"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()  # the file pads every text to 128 tokens; batches are padded to their longest
        self.unk_token = "[UNK]"

    def tokens(self, text: str) -> list[str]:
        """The WordPiece tokens of a text, without [CLS] and [SEP]."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(len(texts), 384) float32 mean-pooled vectors. Texts are batched by length, so little is padding."""
        encodings = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.float32)
            for row, i in enumerate(chunk):
                ids[row, :len(encodings[i].ids)] = encodings[i].ids
                mask[row, :len(encodings[i].ids)] = 1.0
            hidden = self._forward(ids, mask)
            vectors[chunk] = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return vectors

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        # As one 2-D product with the weight transposed once: NumPy sends that to BLAS; a 3-D one is ~20x slower.
        if (transposed := self._transposed.get(name)) is None:
            transposed = self._transposed[name] = np.ascontiguousarray(self.weights[f"{name}.weight"].T)
        flat = x.reshape(-1, x.shape[-1]) @ transposed + self.weights[f"{name}.bias"]
        return flat.reshape(*x.shape[:-1], -1)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], self.eps)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.weights
        batch, width = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:width]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        head_dim = self.dim // self.heads
        # Padding never receives attention: its scores get the lowest float, as transformers' extended mask does.
        blocked = (1.0 - mask)[:, None, None, :] * np.finfo(np.float32).min
        for layer in range(self.layers):
            prefix = f"encoder.layer.{layer}"

            def heads(name: str) -> np.ndarray:
                projected = self._linear(x, f"{prefix}.attention.self.{name}")
                return projected.reshape(batch, width, self.heads, head_dim).transpose(0, 2, 1, 3)

            scores = heads("query") @ heads("key").transpose(0, 1, 3, 2) * np.float32(head_dim ** -0.5) + blocked
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attention = scores / scores.sum(axis=-1, keepdims=True)
            context = (attention @ heads("value")).transpose(0, 2, 1, 3).reshape(batch, width, self.dim)
            x = self._norm(x + self._linear(context, f"{prefix}.attention.output.dense"),
                           f"{prefix}.attention.output.LayerNorm")
            inner = _gelu(self._linear(x, f"{prefix}.intermediate.dense"))
            x = self._norm(x + self._linear(inner, f"{prefix}.output.dense"), f"{prefix}.output.LayerNorm")
        return x.astype(np.float32, copy=False)
