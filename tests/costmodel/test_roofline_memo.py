"""The roofline's memoised curves and inlined attention law price every input exactly as the plain formulas do
(issue 13: the simulator got faster, its outputs must stay byte-identical)."""

from __future__ import annotations

import numpy as np
import pytest

from drex.costmodel.fitted import layer_features
from drex.costmodel.roofline import RooflineCostModel
from drex.models import get_model


@pytest.fixture(scope="module")
def cm():
    return RooflineCostModel(get_model("llama2-13b"), "h200")


def reference_layer(cm, tokens, context=0, attn=0):
    tokens = np.asarray(tokens, dtype=float)
    return (cm._curve_s(cm._lin, tokens) + cm._attn(layer_features(tokens, context, attn))) * (tokens > 0)


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def test_scalars_match_the_formula_bit_for_bit(cm):
    # numpy's power differs in the last bit between 0-d operands and arrays at some of these counts
    for n in range(0, 1000):  # (the 0-d and array results differ at 16 counts below 504)
        assert same(cm.layer_s(n, 7.0 * n), reference_layer(cm, n, 7.0 * n)), n
        assert same(cm.layer_s(float(n), 0, 3.0 * n), reference_layer(cm, float(n), 0, 3.0 * n)), n
        assert same(cm.head_s(n), cm._curve_s(cm._head, np.asarray(float(n))) * (n > 0)), n


def test_arrays_of_any_shape_match_the_formula_bit_for_bit(cm):
    rng = np.random.default_rng(0)
    for trial in range(400):
        shape = [(5,), (1, 7), (3, 1, 4), (2, 6)][trial % 4]
        tokens = rng.integers(0, 4000, shape).astype(float)
        if trial % 5 == 0:
            tokens = tokens + 0.5  # not whole counts: computed, not looked up
        if trial % 7 == 0:
            tokens[..., 0] = 70_000  # beyond the table
        ctx = tokens * rng.integers(1, 3000)
        attn = [0, 0.0, 12345.0, tokens * 100.0][trial % 4]
        assert same(cm.layer_s(tokens, ctx, attn), reference_layer(cm, tokens, ctx, attn)), trial
        assert same(cm.layer_s(tokens[..., :1], ctx, attn), reference_layer(cm, tokens[..., :1], ctx, attn)), trial
        assert same(cm.head_s(tokens), cm._curve_s(cm._head, tokens) * (tokens > 0)), trial


def test_one_element_floats_match_the_vectorised_call(cm):
    from drex.costmodel.price import step_s, step_s_one

    rng = np.random.default_rng(1)
    for trial in range(3000):
        tokens = float(rng.integers(0, 5000)) + (0.5 if trial % 11 == 0 else 0.0) + (70_000 if trial % 13 == 0 else 0)
        ctx = float(rng.integers(0, 200_000)) * (trial % 3 != 0)
        attn = [0.0, float(rng.integers(1, 10**7))][trial % 2]
        vec = cm.layer_s(np.array([[tokens]]), np.array([[ctx]]), attn)
        assert same(cm.layer_s_one(tokens, ctx, attn), vec[0, 0]), (tokens, ctx, attn)
        assert same(cm.head_s_one(tokens), cm.head_s(np.array([tokens]))[0]), tokens
        rows, heads = int(tokens), int(rng.integers(1, 300))
        one = step_s_one(cm, 40, rows, ctx, attn, heads, heads + 3)
        assert same(one, step_s(cm, np.array([[40]]), np.array([[rows]]), np.array([[ctx]]), attn, [heads],
                                heads + 3)[0]), (rows, ctx, attn)



def test_a_plain_run_priced_step_by_step_matches_the_stacked_call(cm):
    """plain_run_s (the simulator's runs of plain steps, priced only as far as the next arrival) gives what
    step_s gives for the run's steps stacked, bit for bit."""
    from itertools import islice

    from drex.costmodel.price import plain_run_s, step_s

    assert cm.fast_one
    rng = np.random.default_rng(2)
    for trial in range(300):
        n, k = int(rng.integers(1, 300)), int(rng.integers(2, 65))
        pre_tokens = [0, int(rng.integers(1, 400))][trial % 2]
        attn = 0.0 if not pre_tokens else float(pre_tokens * rng.integers(1, 2000))
        ctx0 = float(rng.integers(0, 200_000))
        stacked = step_s(cm, np.array([[40]]), np.array([[n + pre_tokens]]), (ctx0 + n * np.arange(k))[None, :],
                         attn, [n + trial % 2], n + 1)
        one_by_one = np.array(list(islice(plain_run_s(cm, 40, n + pre_tokens, ctx0, n, attn, n + trial % 2, n + 1),
                                          k)))
        assert same(one_by_one, stacked), (n, k, ctx0, attn)
