"""The cost model fitted from a measured profile: small physically-shaped laws, pure numpy.

Every operation follows one law shape::

    t = c0 + smax_p(m, sum_j k_j * x_j) + sum_i a_i * z_i + sum_i b_i * spill(z_i; knee_i, q_i)

``c0`` is a fixed cost (launches, Python dispatch), ``m`` a floor the throughput
term cannot go below (the weights are read once however few rows there are:
the memory-bound flat part of a GEMM), ``k_j * x_j`` the throughput-bound work
(tokens through the linear layers), ``smax_p`` a smooth maximum whose sharpness
``p`` is fitted (p -> inf: a hard roofline max; p = 1: a plain sum), and
``a_i * z_i`` work in kernels of its own (attention reading the KV cache:
``decode_context``; causal prefill attention: ``prefill_attn``). The spill
term ``spill(z) = z / (1 + (knee / z)^q)`` raises the cost per unit of z from
``a`` to ``a + b`` around ``knee``: on a CPU, decode attention gathers each
row's KV into fresh buffers, and once they outgrow the last-level cache (and
glibc maps them fresh from the kernel, page by page) every further token costs
about three times as much. On a GPU the fit leaves ``b`` at zero. All
parameters are non-negative. ``fit.py`` fits them; this module only evaluates.

An optional ``table`` of (tokens, factor) knots multiplies the throughput term
by a factor interpolated in the first x feature: measured GPU GEMM times step
with wave quantization (10-30% jumps a smooth law cannot follow), and a profile
imported from dense public measurements (``vidur.py``) keeps those steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drex.costmodel.base import CostModel

# Feature names: the cost model's own terms (see costmodel.base).
FEATURES = ("tokens", "tokens_up8", "decode_context", "prefill_attn", "prefill_context", "decode_rows", "rows",
            "rows_x_layers", "layers")

LAYER_Z = ("decode_context", "prefill_attn", "prefill_context", "decode_rows")
# family -> (throughput features x, additive features z, spilling features: a subset of z)
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "layer": (("tokens",), LAYER_Z, ("decode_context", "prefill_attn")),
    "attn": (("tokens",), LAYER_Z, ("decode_context", "prefill_attn")),
    "mlp": (("tokens",), (), ()),
    "head": (("rows",), (), ()),
    "buffer": (("rows",), (), ()),
    "step": (("rows",), (), ()),
    # The copy kernel's grid spans every layer for every row: a per-row term beside the copied bytes.
    "kv_copy": (("rows_x_layers",), ("layers", "rows"), ()),
    # The layer without its attention kernel (imported profiles measure it apart): optional.
    "linear": (("tokens",), (), ()),
    # A learned exit point evaluated (adapter, norm, estimator, decision) and rows regrouped past an exit:
    # optional (profiles made before they were measured price them at zero).
    "exit_eval": (("rows",), (), ()),
    "regroup": (("rows",), (), ()),
}
OPTIONAL_FAMILIES = ("linear", "exit_eval", "regroup")

# measured op -> the family that predicts it
OP_FAMILY = {
    "layer_decode": "layer", "layer_prefill": "layer", "attn_decode": "attn", "attn_prefill": "attn",
    "mlp": "mlp", "head": "head", "buffer": "buffer", "step": "step", "kv_copy": "kv_copy",
    "linear": "linear", "exit_eval": "exit_eval", "regroup": "regroup",
}


def smooth_max(m, u, p):
    """(m^p + u^p)^(1/p), computed without overflow; smooth_max(0, u, p) == u."""
    m = np.asarray(m, dtype=float)
    u = np.asarray(u, dtype=float)
    hi = np.maximum(m, u)
    lo = np.minimum(m, u)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(hi > 0, lo / np.where(hi > 0, hi, 1.0), 0.0)
    return hi * (1.0 + ratio**p) ** (1.0 / p)


def spill(z, knee, q):
    """z weighted by a logistic step in log z: ~0 well below knee, ~z well above it."""
    z = np.asarray(z, dtype=float)
    with np.errstate(divide="ignore", over="ignore"):
        ratio = np.where(z > 0, knee / np.where(z > 0, z, 1.0), np.inf)
        return np.where(z > 0, z / (1.0 + ratio**q), 0.0)


@dataclass(frozen=True)
class Law:
    x: tuple[str, ...]
    z: tuple[str, ...]
    c0: float
    m: float
    p: float
    k: tuple[float, ...]
    a: tuple[float, ...]
    spill: tuple[tuple[str, float, float, float], ...] = ()  # (feature, b, knee, q)
    table: tuple[tuple[float, ...], tuple[float, ...]] = ()  # (knots of x[0], factors on the throughput term)

    def __call__(self, feats: dict) -> np.ndarray:
        t = np.asarray(self.c0, dtype=float)
        if self.x:
            u = sum(kj * np.asarray(feats[name], dtype=float) for kj, name in zip(self.k, self.x))
            s = smooth_max(self.m, u, self.p)
            if self.table:
                s = s * np.interp(np.asarray(feats[self.x[0]], dtype=float), self.table[0], self.table[1])
            t = t + s
        for ai, name in zip(self.a, self.z):
            t = t + ai * np.asarray(feats[name], dtype=float)
        for name, b, knee, q in self.spill:
            t = t + b * spill(feats[name], knee, q)
        return t

    def to_json(self) -> dict:
        return {"x": list(self.x), "z": list(self.z), "c0": self.c0, "m": self.m, "p": self.p,
                "k": dict(zip(self.x, self.k)), "a": dict(zip(self.z, self.a)),
                "spill": {name: {"b": b, "knee": knee, "q": q} for name, b, knee, q in self.spill},
                **({"table": {"knots": list(self.table[0]), "factors": list(self.table[1])}} if self.table else {})}

    @classmethod
    def from_json(cls, d: dict, where: str) -> Law:
        try:
            x, z = tuple(d["x"]), tuple(d["z"])
            spills = tuple((str(n), float(h["b"]), float(h["knee"]), float(h["q"])) for n, h in d.get("spill", {}).items())
            table = ()
            if "table" in d:
                table = (tuple(float(v) for v in d["table"]["knots"]), tuple(float(v) for v in d["table"]["factors"]))
                if not x or len(table[0]) != len(table[1]) or len(table[0]) < 2 or list(table[0]) != sorted(table[0]):
                    raise ValueError("table needs an x feature and >= 2 increasing knots, one factor each")
            law = cls(x, z, float(d["c0"]), float(d["m"]), float(d["p"]),
                      tuple(float(d["k"][n]) for n in x), tuple(float(d["a"][n]) for n in z), spills, table)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{where}: malformed law ({type(e).__name__}: {e})") from None
        vals = (law.c0, law.m, law.p, *law.k, *law.a, *(v for sp in spills for v in sp[1:]),
                *(law.table[1] if law.table else ()))
        if not all(np.isfinite(vals)) or min(vals) < 0 or law.p < 1:
            raise ValueError(f"{where}: law parameters must be finite and non-negative (p >= 1), got {vals}")
        unknown = [n for n in x + z + tuple(sp[0] for sp in spills) if n not in FEATURES]
        if unknown:
            raise ValueError(f"{where}: unknown features {unknown}")
        return law


def layer_features(num_tokens, decode_context=0, prefill_attn=0, num_decode=None, prefill_context=None) -> dict:
    """The cost model's three terms, plus two the base interface does not carry, recovered when not given:

    - ``decode_rows``: decode rows among the tokens (paged decode attention costs per row, prefill per
      chunk). All tokens when there is no prefill, none when there is no decode context, else half;
    - ``prefill_context``: K/V entries the prefill chunks' attention reads (prior context + chunk; the
      real backend builds each chunk's slot list entry by entry). From prefill_attn = n * (p + n / 2):
      p + n = prefill_attn / n + n / 2 with n the prefill tokens: exact for one chunk, low for several.
    """
    tokens = np.asarray(num_tokens, dtype=float)
    cd = np.asarray(decode_context, dtype=float)
    pa = np.asarray(prefill_attn, dtype=float)
    if num_decode is None:
        rows = np.where(pa > 0, np.where(cd > 0, tokens / 2, 0.0), tokens)
    else:
        rows = np.asarray(num_decode, dtype=float)
    if prefill_context is None:
        n = np.maximum(tokens - rows, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ctx = np.where((pa > 0) & (n > 0), pa / np.where(n > 0, n, 1.0) + n / 2, 0.0)
    else:
        ctx = np.asarray(prefill_context, dtype=float)
    return {"tokens": tokens, "decode_context": cd, "prefill_attn": pa, "prefill_context": ctx, "decode_rows": rows}


def token_features(num_tokens) -> dict:
    """``tokens`` and ``tokens_up8``: the count rounded up to a multiple of 8, the count Vidur's predictor prices
    every per-token operation at (its ``_total_num_tokens_rounded``; laws of ``vidur_fit``'s vidur rule)."""
    tokens = np.asarray(num_tokens, dtype=float)
    return {"tokens": tokens, "tokens_up8": np.ceil(tokens / 8.0) * 8.0}


def _out(t, *counts):
    """Zero where there is no work; a float for scalar inputs, an array otherwise."""
    work = np.ones_like(np.asarray(t, dtype=float), dtype=bool)
    for c in counts:
        work = work & (np.asarray(c) > 0)
    res = np.where(work, t, 0.0)
    return float(res) if res.ndim == 0 else res


class FittedCostModel(CostModel):
    """Predicts from the laws of ``fit.json``: a few array operations per call."""

    def __init__(self, laws: dict[str, Law], name: str = "profile"):
        missing = [f for f in FAMILIES if f not in laws and f not in OPTIONAL_FAMILIES]
        if missing:
            raise ValueError(f"fitted cost model lacks laws for {missing}")
        self.laws = laws
        self.name = name
        self._up8 = any("tokens_up8" in law.x for law in laws.values())  # (computed only where a law reads it)

    def _layer_features(self, *args) -> dict:
        feats = layer_features(*args)
        if self._up8:
            feats["tokens_up8"] = token_features(feats["tokens"])["tokens_up8"]
        return feats

    def _token_features(self, num_tokens) -> dict:
        return token_features(num_tokens) if self._up8 else {"tokens": num_tokens}

    @property
    def prices_regroup(self) -> bool:
        return "regroup" in self.laws

    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0, num_decode=None, prefill_context=None):
        """One layer; ``num_decode`` / ``prefill_context`` (see ``layer_features``) sharpen mixed steps."""
        feats = self._layer_features(num_tokens, decode_context, prefill_attn, num_decode, prefill_context)
        return _out(self.laws["layer"](feats), num_tokens)

    def attn_s(self, num_tokens, decode_context=0, prefill_attn=0, num_decode=None, prefill_context=None):
        feats = self._layer_features(num_tokens, decode_context, prefill_attn, num_decode, prefill_context)
        return _out(self.laws["attn"](feats), num_tokens)

    def linear_s(self, num_tokens):
        """The layer less its attention kernel: the fitted law when the profile measured it, else the difference."""
        if "linear" in self.laws:
            return _out(self.laws["linear"](self._token_features(num_tokens)), num_tokens)
        return self.layer_s(num_tokens) - self.attn_s(num_tokens)

    def mlp_s(self, num_tokens):
        return _out(self.laws["mlp"](self._token_features(num_tokens)), num_tokens)

    def head_s(self, num_rows):
        return _out(self.laws["head"]({"rows": num_rows}), num_rows)

    def step_overhead_s(self, num_rows):
        return _out(self.laws["step"]({"rows": num_rows}), num_rows)

    def exit_eval_s(self, num_rows):
        if "exit_eval" not in self.laws:
            return super().exit_eval_s(num_rows)
        return _out(self.laws["exit_eval"]({"rows": num_rows}), num_rows)

    def regroup_s(self, num_rows):
        if "regroup" not in self.laws:
            return super().regroup_s(num_rows)
        return _out(self.laws["regroup"]({"rows": num_rows}), num_rows)

    def kv_copy_s(self, num_rows, num_layers):
        rows, layers = np.asarray(num_rows, dtype=float), np.asarray(num_layers, dtype=float)
        t = self.laws["kv_copy"]({"rows_x_layers": rows * layers, "layers": layers, "rows": rows})
        return _out(t, rows, layers)

    def buffer_s(self, num_rows):
        return _out(self.laws["buffer"]({"rows": num_rows}), num_rows)

    def predict_op(self, op: str, num_rows, context, chunk, num_layers):
        """Seconds for a measured operation described as in measurements.csv (fit report, ``show``)."""
        num_rows, context, chunk = (np.asarray(v, dtype=float) for v in (num_rows, context, chunk))
        if op.endswith("_decode"):
            args = (num_rows, num_rows * context, 0.0)
            return self.layer_s(*args) if op.startswith("layer") else self.attn_s(*args)
        if op.endswith("_prefill"):
            args = (chunk, 0.0, chunk * (context + chunk / 2))
            return self.layer_s(*args) if op.startswith("layer") else self.attn_s(*args)
        if op in ("mlp", "linear"):
            return self.mlp_s(num_rows) if op == "mlp" else self.linear_s(num_rows)
        if op == "kv_copy":
            return self.kv_copy_s(num_rows, num_layers)
        return {"head": self.head_s, "buffer": self.buffer_s, "step": self.step_overhead_s,
                "exit_eval": self.exit_eval_s, "regroup": self.regroup_s}[op](num_rows)
