"""The one-step float path of the profitability rules gives the vectorised values bit for bit (issue 13:
faster decisions, identical outputs). The roofline answers in floats; the same model with fast_one off
takes the array path, which the float path must reproduce exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from drex.core import profitability as prof
from drex.costmodel.roofline import RooflineCostModel
from drex.models import get_model


@pytest.fixture(scope="module", params=["h200", "cpu"])
def models(request):
    fast = RooflineCostModel(get_model("llama2-13b"), request.param)
    slow = copy.copy(fast)
    slow.fast_one = False
    return fast, slow


def cases(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        rows = int(rng.integers(1, 300))
        exiting = int(rng.integers(0, rows + 1)) if i % 7 else rows
        ctx = int(rng.integers(rows, rows * 4000))
        stay_ctx = int(ctx * (rows - exiting) / rows)
        base = [0, 0, int(rng.integers(1, 512))][i % 3]
        attn = float(base * rng.integers(0, 3000) + base * base / 2) if base else 0.0
        e = int(rng.integers(1, 40))
        yield rows, exiting, ctx, stay_ctx, base, attn, e


def same(a, b):
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.slow  # every split size on three cost models: about a second
def test_split_and_continue_savings_match_the_array_path(models):
    fast, slow = models
    for i, (rows, exiting, ctx, stay_ctx, base, attn, e) in enumerate(cases(0, 200)):
        m = 1 + i % (prof.FEW_STEPS + 1)  # one step to a few, and one more than the float path takes
        a = lambda v: np.array([v] * m) + np.arange(m) * (v > 0)  # noqa: E731
        for drained in (False, True):
            args = (e, 40, a(rows), a(exiting), a(ctx), a(stay_ctx), a(max(rows - exiting, 3)), base, attn)
            kw = dict(parked_steps=1 + rows % 4, drained=drained)
            assert same(prof.split_saving_s(fast, *args, **kw), prof.split_saving_s(slow, *args, **kw)), args
            # with the option of a flush at the next step: the same pair, the first as without it
            fast2, slow2 = (prof.split_saving_s(c, *args, **kw, soon_rows=a(1 + rows % 7)) for c in (fast, slow))
            assert all(same(f, g) for f, g in zip(fast2, slow2)), args
            assert same(fast2[0], prof.split_saving_s(slow, *args, **kw)), args
        args = (e, 40, a(rows), a(exiting), a(ctx), a(stay_ctx), base, attn)
        assert same(prof.continue_saving_s(fast, *args), prof.continue_saving_s(slow, *args)), args
        args = (e, 40, a(rows), a(ctx), 1 + rows % 5, 7 * rows, base, attn)
        assert same(prof.drain_saving_s(fast, *args), prof.drain_saving_s(slow, *args)), args


def test_the_float_path_is_taken_only_for_a_few_steps_of_one_shape(models):
    fast, slow = models
    two = np.array([4, 5])
    out = prof.continue_saving_s(fast, 20, 40, two, np.array([1, 2]), two * 100, two * 50)
    assert out.shape == (2,)
    assert prof._few_steps(fast, np.array([3])) and prof._few_steps(fast, two, two)
    assert not prof._few_steps(fast, np.arange(prof.FEW_STEPS + 1)) and not prof._few_steps(fast, two, np.array([1]))
    assert not prof._few_steps(fast, np.array(3)) and not prof._few_steps(fast, 3) and not prof._few_steps(slow, two)


def test_split_and_continue_saves_no_attention_where_the_batch_is_attended_in_place(models):
    """decode_attends_batch (the CPU decode mirror): the rows that go on read every row's K/V, so going on
    saves only the linear layers of the rows that left; the float and array paths agree."""
    fast, _ = models
    batch = copy.copy(fast)
    batch.decode_attends_batch = True
    for m in (1, prof.FEW_STEPS + 1):  # the float path, and the array path
        rows, exiting, ctx = np.full(m, 64.0), np.full(m, 40.0), np.full(m, 64.0 * 3000)
        few, many = ctx * 0.1, ctx * 0.3  # the stayers' own context: ignored
        got = prof.continue_saving_s(batch, 20, 40, rows, exiting, ctx, few)
        assert same(got, prof.continue_saving_s(batch, 20, 40, rows, exiting, ctx, many))
        assert same(got, prof.continue_saving_s(fast, 20, 40, rows, exiting, ctx, ctx))
        assert got[0] == prof.continue_saving_one(batch, 20, 40, 64, 40, 64 * 3000, 0, 0, 0.0)
        assert got[0] < prof.continue_saving_s(fast, 20, 40, rows, exiting, ctx, few)[0]  # it saved attention
