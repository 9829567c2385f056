"""The cost-model interface: per-layer costs that compose into any step.

All methods are pure and cheap (the simulator calls them at every step) and
accept numpy arrays for their count arguments, so a run of identical steps is
priced in one call. Work is described by token counts, never by tensors:

- ``num_tokens``: rows through a layer (decode rows + prefill tokens);
- ``decode_context``: sum over decode rows of tokens already cached (attention reads);
- ``prefill_attn``: sum over prefill chunks of chunk_len * (prior_context + chunk_len / 2)
  (query-key pairs of causal attention).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class CostModel(ABC):
    name: str = "abstract"  # "roofline" or "profile:<path>"
    # True: the *_one methods below answer in plain float arithmetic (fast); callers may then price one-step
    # decisions element by element (drex.core.profitability) and get the vectorised values bit for bit.
    fast_one: bool = False
    # True: a decode segment's attention reads the K/V of every row of its step's decode batch, however few
    # rows go on (the real CPU backend's decode mirror attends a subset of its rows in place); set for
    # profiles measured on a CPU.
    decode_attends_batch: bool = False
    # True: ``regroup_s`` prices something (a profile with a regroup law); False: it is zero, and the simulator
    # skips counting the rows regrouped at each exit point.
    prices_regroup: bool = False

    @abstractmethod
    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
        """Seconds for ONE decoder layer over the given work."""

    @abstractmethod
    def head_s(self, num_rows):
        """Seconds for an exit head (final norm + LM head + confidence) over num_rows."""

    @abstractmethod
    def step_overhead_s(self, num_rows):
        """Seconds per step outside the layers: embedding, sampling, launches, bookkeeping."""

    @abstractmethod
    def kv_copy_s(self, num_rows, num_layers):
        """Seconds to copy the K/V of num_rows exited tokens into num_layers skipped layers."""

    @abstractmethod
    def buffer_s(self, num_rows):
        """Seconds to park or fetch num_rows hidden states in the rebatching pool."""

    # -- priced only where measured (a fitted profile's laws); zero otherwise ----------------------

    def exit_eval_s(self, num_rows):
        """Seconds to evaluate one learned exit point (adapter, exit norm, estimator, decision) over num_rows:
        what a learned exit costs instead of an LM-head pass (``head_s``)."""
        return np.zeros_like(np.asarray(num_rows, dtype=float)) if np.ndim(num_rows) else 0.0

    def regroup_s(self, num_rows):
        """Seconds to regroup the num_rows that go on past an exit point where others stopped."""
        return np.zeros_like(np.asarray(num_rows, dtype=float)) if np.ndim(num_rows) else 0.0

    # -- compositions shared by every model -------------------------------------------------

    def layers_s(self, first: int, last: int, num_tokens, decode_context=0, prefill_attn=0):
        """Layers [first, last) over the same rows."""
        if last <= first:
            return np.zeros_like(np.asarray(num_tokens, dtype=float)) if np.ndim(num_tokens) else 0.0
        return (last - first) * self.layer_s(num_tokens, decode_context, prefill_attn)

    # -- one element, as a float: bit for bit what the vectorised call gives for it ---------------

    def layer_s_one(self, num_tokens, decode_context=0.0, prefill_attn=0.0) -> float:
        """``layer_s`` of one-element arrays, as a float (a model may answer faster: the simulator asks this for
        nearly every step). An array's element, not a 0-d call: numpy may round those differently."""
        return float(self.layer_s(np.array([float(num_tokens)]), np.array([float(decode_context)]),
                                  np.array([float(prefill_attn)]))[0])

    def head_s_one(self, num_rows) -> float:
        """``head_s`` of a one-element array, as a float."""
        return float(self.head_s(np.array([float(num_rows)]))[0])

    def step_overhead_s_one(self, num_rows) -> float:
        return float(self.step_overhead_s(np.array([float(num_rows)]))[0])

    def kv_copy_s_one(self, num_rows, num_layers) -> float:
        return float(self.kv_copy_s(np.array([float(num_rows)]), num_layers)[0])

    def buffer_s_one(self, num_rows) -> float:
        return float(self.buffer_s(np.array([float(num_rows)]))[0])
