"""An early-exit decoder for the Llama / Qwen2 family, in one readable file.

RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, optional q/k/v
bias (Qwen2). Parameter names follow Hugging Face's (minus the ``model.``
prefix) so checkpoints load by name. What makes it early-exit:

- ``run_layers(h, meta, cache, start, end)`` runs any layer range [start, end)
  over any set of rows described by an ``AttnMeta`` (drex.real.kvcache): decode
  rows, prefill chunks, rows fetched from the rebatching buffer;
- ``exit_logits(h, e)``: the exit head after layer e (layers [0, e) computed):
  the final norm + LM head, or a separately stored head for that exit;
- ``forward_train(ids)``: a plain causal pass that returns logits at every
  exit and at the top, for training exit heads.

Each ``DecoderLayer`` exposes ``attn_block`` and ``mlp_block`` so the profiler
can time attention and MLP apart. The numerics follow transformers' Llama
(RMSNorm in fp32, rotary tables built the same way) so greedy decoding matches
``LlamaForCausalLM.generate`` token for token in fp32.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from drex.models import ModelShape, with_layers
from drex.real.init import uninitialised


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics whatever the activation dtype, as transformers does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos, sin [*positions.shape, head_dim], computed in fp32 then cast (transformers' order)."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class DenseMeta:
    """Rows of a plain causal pass without cache: h is [B, T, H], all sequences start at 0."""

    def __init__(self, seq_len: int, device):
        self.positions = torch.arange(seq_len, device=device)  # [T]
        self._rope: dict = {}

    def rope(self, inv_freq: torch.Tensor, dtype: torch.dtype):
        key = dtype
        if key not in self._rope:
            self._rope[key] = rope_cos_sin(self.positions, inv_freq, dtype)
        return self._rope[key]


class Attention(nn.Module):
    def __init__(self, shape: ModelShape, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
        h, q_dim, kv_dim = shape.hidden_size, shape.num_heads * shape.head_dim, shape.kv_dim
        self.q_proj = nn.Linear(h, q_dim, bias=shape.qkv_bias)
        self.k_proj = nn.Linear(h, kv_dim, bias=shape.qkv_bias)
        self.v_proj = nn.Linear(h, kv_dim, bias=shape.qkv_bias)
        self.o_proj = nn.Linear(q_dim, h, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(shape.head_dim, shape.rope_theta), persistent=False)
        self.scale = 1.0 / math.sqrt(shape.head_dim)

    def forward(self, x: torch.Tensor, meta, cache=None) -> torch.Tensor:
        lead = x.shape[:-1]  # [N] against the paged cache, [B, T] for a dense pass
        q = self.q_proj(x).view(*lead, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(*lead, self.num_kv_heads, self.head_dim)
        cos, sin = meta.rope(self.inv_freq, x.dtype)  # [*positions, D]
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is None:
            o = self._dense_causal(q, k, v)
        else:
            o = cache.attend(self.layer_idx, q, k, v, meta, self.scale)  # [N, Hq, D]
        return self.o_proj(o.reshape(*lead, self.num_heads * self.head_dim))

    def _dense_causal(self, q, k, v):
        # q [B, T, Hq, D], k/v [B, T, Hkv, D] -> [B, T, Hq, D]
        groups = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, scale=self.scale)
        return o.transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.gate_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, shape: ModelShape, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.self_attn = Attention(shape, layer_idx)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = MLP(shape)

    def attn_block(self, h: torch.Tensor, meta, cache=None) -> torch.Tensor:
        """Residual attention half: writes this layer's K/V of the rows into the cache."""
        return h + self.self_attn(self.input_layernorm(h), meta, cache)

    def mlp_block(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(self.post_attention_layernorm(h))

    def forward(self, h: torch.Tensor, meta, cache=None) -> torch.Tensor:
        return self.mlp_block(self.attn_block(h, meta, cache))


class Adapter(nn.Module):
    """A residual bottleneck on an exit's hidden state: h + up(silu(down(norm(h)))); zero ``up`` = identity."""

    def __init__(self, hidden: int, rank: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(hidden, eps)
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.silu(self.down(self.norm(h))))


class Estimator(nn.Module):
    """P(this exit's token is the full model's) from the exit's normed hidden state: a two-layer MLP, so
    deciding costs ~hidden*width per row instead of an LM-head pass (hidden*vocab)."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, width)
        self.fc2 = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.silu(self.fc1(x))).float()).squeeze(-1)


class ExitHead(nn.Module):
    """A separately trained exit head; a part left as None falls back to the shared one (or is absent:
    no adapter, no estimator)."""

    def __init__(self, shape: ModelShape, norm: bool = True, lm_head: bool = True, adapter_rank: int = 0,
                 estimator_width: int = 0):
        super().__init__()
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps) if norm else None
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False) if lm_head else None
        self.adapter = Adapter(shape.hidden_size, adapter_rank, shape.rms_norm_eps) if adapter_rank else None
        self.estimator = Estimator(shape.hidden_size, estimator_width) if estimator_width else None


class EEModel(nn.Module):
    def __init__(self, shape: ModelShape, exit_layers: tuple[int, ...] | None = None):
        super().__init__()
        self.shape = shape
        self.num_layers = shape.num_layers
        self.exit_layers = tuple(exit_layers if exit_layers is not None else shape.trained_exits)
        bad = [e for e in self.exit_layers if not 0 < e < shape.num_layers]
        if bad:
            raise ValueError(f"exit layers {bad} must lie in [1, {shape.num_layers})")
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(shape, i) for i in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        if shape.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.exit_heads = nn.ModuleDict()  # str(exit layer) -> ExitHead

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def random(cls, shape: ModelShape, dtype=torch.float32, device="cpu", seed: int = 0,
               num_layers: int | None = None, exit_layers: tuple[int, ...] | None = None) -> "EEModel":
        """Random weights, fan-in scaled so activations stay O(1) at any depth.

        The LM head is drawn 4x wider than fan-in scaling: logits with std ~4 give a random
        model a spread of margins (median ~0.25, a tenth above 0.8), so exit rules have
        something to decide; plain scaling leaves every margin near 0.01.

        ``num_layers`` builds only the first k layers (the profiler times 70B layers one or two at a time).
        """
        if num_layers is not None:
            shape = with_layers(shape, num_layers)
            if exit_layers is None:
                exit_layers = tuple(e for e in shape.trained_exits if e < num_layers)
        # A generator on the target device: a 7B model's weights drawn on one CPU core take minutes.
        gen = torch.Generator(device=device).manual_seed(seed)
        with uninitialised(dtype, device):
            model = cls(shape, exit_layers)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=p.device))
                elif name == "embed_tokens.weight":
                    p.copy_(torch.randn(p.shape, generator=gen, device=p.device))
                elif name == "lm_head.weight":
                    p.copy_(torch.randn(p.shape, generator=gen, device=p.device) * (4.0 / math.sqrt(p.shape[1])))
                else:  # Linear [out, in]
                    p.copy_(torch.randn(p.shape, generator=gen, device=p.device) / math.sqrt(p.shape[1]))
        return model.eval()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=torch.float32, device="cpu",
                        exit_layers: tuple[int, ...] | None = None, extra: str | Path | None = None) -> "EEModel":
        """A local Hugging Face Llama / Qwen2 checkpoint directory (config.json + *.safetensors); ``extra``:
        a safetensors file of trained exit parts loaded over it."""
        from drex.real.weights import load_pretrained

        return load_pretrained(cls, path, dtype=dtype, device=device, exit_layers=exit_layers, extra=extra)

    def save_pretrained(self, path: str | Path) -> None:
        """config.json (with ``drex_exit_layers``) + model.safetensors under Hugging Face names."""
        from drex.real.weights import save_pretrained

        save_pretrained(self, path)

    def add_exit_head(self, exit_layer: int, norm: bool = True, lm_head: bool = True, adapter_rank: int = 0,
                      estimator_width: int = 0) -> ExitHead:
        """A separate head for one exit, initialised from the shared norm / LM head (an adapter as identity)."""
        head = ExitHead(self.shape, norm, lm_head, adapter_rank, estimator_width).to(
            device=self.norm.weight.device, dtype=self.norm.weight.dtype)
        with torch.no_grad():
            if head.norm is not None:
                head.norm.weight.copy_(self.norm.weight)
            if head.lm_head is not None:
                head.lm_head.weight.copy_(self.lm_head.weight)
            if head.adapter is not None:
                head.adapter.norm.weight.fill_(1.0)
                nn.init.normal_(head.adapter.down.weight, std=head.adapter.down.weight.shape[1] ** -0.5)
                head.adapter.up.weight.zero_()
            if head.estimator is not None:
                for lin in (head.estimator.fc1, head.estimator.fc2):
                    nn.init.normal_(lin.weight, std=lin.weight.shape[1] ** -0.5)
                    lin.bias.zero_()
        self.exit_heads[str(exit_layer)] = head
        return head

    # -- the forward pieces -----------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)  # [..., H]

    def run_layers(self, h: torch.Tensor, meta, cache, start: int, end: int) -> torch.Tensor:
        """Layers [start, end) over the rows ``meta`` describes; h [N, H] -> [N, H]."""
        for layer in self.layers[start:end]:
            h = layer(h, meta, cache)
        return h

    def _head(self, exit_layer: int) -> ExitHead | None:
        return self.exit_heads[str(exit_layer)] if str(exit_layer) in self.exit_heads else None

    def exit_hidden(self, h: torch.Tensor, exit_layer: int) -> torch.Tensor:
        """The normed hidden state the LM head reads at an exit (its adapter, then its norm)."""
        head = self._head(exit_layer)
        if head is not None and head.adapter is not None:
            h = head.adapter(h)
        return ((head.norm if head is not None else None) or self.norm)(h)

    def head_logits(self, x: torch.Tensor, exit_layer: int) -> torch.Tensor:
        """Logits [..., V] (fp32) from an exit's normed hidden state ``exit_hidden``."""
        head = self._head(exit_layer)
        return ((head.lm_head if head is not None else None) or self.lm_head)(x).float()

    def shares_top_head(self, exit_layer: int) -> bool:
        """Whether the exit reads its normed state with the top's LM head (so both can run as one pass)."""
        head = self._head(exit_layer)
        return head is None or head.lm_head is None

    def has_estimator(self, exit_layer: int) -> bool:
        head = self._head(exit_layer)
        return head is not None and head.estimator is not None

    def estimate(self, x: torch.Tensor, exit_layer: int) -> torch.Tensor:
        """The exit's learned confidence [...] from its normed hidden state, without the LM head."""
        head = self._head(exit_layer)
        if head is None or head.estimator is None:
            raise ValueError(f"exit {exit_layer} has no trained confidence estimator (metric 'learned')")
        return head.estimator(x)

    def exit_logits(self, h: torch.Tensor, exit_layer: int) -> torch.Tensor:
        """Logits [..., V] (fp32) after layers [0, exit_layer); exit_layer == num_layers is the top."""
        return self.head_logits(self.exit_hidden(h, exit_layer), exit_layer)

    def forward_train(self, input_ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """Causal full-sequence pass, no cache: {exit layer: logits [B, T, V]} for every exit and the top."""
        h = self.embed(input_ids)  # [B, T, H]
        meta = DenseMeta(input_ids.shape[1], input_ids.device)
        out: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            h = layer(h, meta)
            if i + 1 in self.exit_layers:
                out[i + 1] = self.exit_logits(h, i + 1)
        out[self.num_layers] = self.exit_logits(h, self.num_layers)
        return out


# -- confidence of a token from its logits ---------------------------------------------------------

def confidence(logits: torch.Tensor, metric: str = "margin") -> torch.Tensor:
    """Per-row confidence [N] from logits [N, V]: margin p1-p2, maxprob p1, or entropy (nats, lower = surer)."""
    probs = torch.softmax(logits.float(), dim=-1)
    if metric == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if metric == "maxprob":
        return probs.max(dim=-1).values
    if metric == "entropy":
        return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    raise ValueError(f"unknown confidence metric {metric!r}: margin, maxprob or entropy")
