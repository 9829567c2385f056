"""drex skips an exit head where no split can pay (drex/core/headskip.py): cases priced by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import drex.sim.simulator as simulator
from drex.core import headskip
from drex.core.headskip import binomial_pmf
from drex.core.step import StepPlan
from simkit import poisson_workload, sim_config
from test_decision import W_S, WeightBound, decoding

HEAD_S = 1e-3  # the exit (and top) head's price, whatever its rows


class WeightBoundHead(WeightBound):
    """WeightBound whose heads cost HEAD_S when they run over any row."""

    def head_s(self, num_rows):
        return np.where(np.asarray(num_rows, dtype=float) > 0, HEAD_S, 0.0)


@pytest.mark.parametrize("n,p", [(1, 0.3), (7, 0.5), (256, 0.014), (256, 0.99), (3000, 0.2)])
def test_binomial_pmf_matches_scipy(n, p):
    assert np.allclose(binomial_pmf(n, p), stats.binom.pmf(np.arange(n + 1), n, p), rtol=1e-9, atol=1e-300)


def skipper(want_rate: float, n: int = 2, **sched):
    """The tiny model (4 layers, exit after 2) with n decode rows, after 100 rows seen at a given want rate,
    in the next epoch (p read from those counts), at a step that is not a probe."""
    s, plan = decoding(WeightBoundHead(), n, **sched)
    sk = s.decider.skip
    sk.observe(0, (np.arange(100) < int(round(100 * want_rate)))[None, :], np.ones((1, 100), dtype=bool))
    sk.commit(1)
    plan.step_id = headskip.EPOCH + 1
    sk.start(plan.step_id)
    return sk, plan


def test_two_weight_bound_rows_skip_the_head_unless_both_likely_exit():
    """By hand, 2 rows, weight-bound, flush of 16 (the optimistic flush the value assumes). Both leave (p^2):
    layers [2, 4) and the top head saved, V2 = 2 W_S + HEAD_S. One leaves (2p(1-p)): going on saves nothing;
    parking the other saves holding (V2) less its 1/16 share of the flush (V2 and the step overhead, 1e-6)
    and its lost next step (the step's cost per row): V1 = V2 - (V2 + 1e-6) / 16 - (4 W_S + HEAD_S + 1e-6) / 2.
    The head (HEAD_S) is worth it at p = 0.9, not at p = 0.5."""
    v2 = 2 * W_S + HEAD_S
    v1 = v2 - (v2 + 1e-6) / 16 - (4 * W_S + HEAD_S + 1e-6) / 2
    for p in (0.5, 0.9):
        value = headskip.evaluation_value_s(WeightBoundHead(), 2, 4, 2, 17.0, p, 16)
        assert np.isclose(value, 2 * p * (1 - p) * v1 + p * p * v2)
    sk, plan = skipper(0.5)
    assert sk.skips(plan) == [0]
    sk, plan = skipper(0.9)
    assert sk.skips(plan) == []


def test_no_skipping_before_enough_rows_were_seen_nor_when_disabled():
    s, plan = decoding(WeightBoundHead(), 2)
    sk = s.decider.skip
    sk.observe(0, np.zeros((1, 10), dtype=bool), np.ones((1, 10), dtype=bool))
    sk.commit(1)
    plan.step_id = headskip.EPOCH + 1
    sk.start(plan.step_id)
    assert sk.skips(plan) == []  # 10 < MIN_SEEN rows: p is not known yet
    sk, plan = skipper(0.0, skip_exit_heads=False)
    assert sk.skips(plan) == []
    sk, plan = skipper(0.0, profitability="art")
    assert sk.skips(plan) == []


def test_counts_come_from_the_steps_that_ran_and_p_is_read_once_an_epoch():
    s, plan = decoding(WeightBoundHead(), 2)
    sk = s.decider.skip
    wants = np.zeros((4, 100), dtype=bool)
    wants[2:] = True  # the last two planned steps would clear the threshold, but only two steps ran
    sk.observe(0, wants, np.ones((4, 100), dtype=bool))
    sk.commit(2)
    assert sk.seen[0] == 200 and sk.wanted[0] == 0
    sk.start(headskip.EPOCH + 5)
    assert sk.p == [0.0]
    sk.observe(0, np.ones((1, 100), dtype=bool), np.ones((1, 100), dtype=bool))
    sk.commit(1)
    sk.start(headskip.EPOCH + 9)
    assert sk.p == [0.0]  # same epoch: unchanged
    sk.start(2 * headskip.EPOCH)
    assert sk.p == [0.33]


def test_the_first_step_of_an_epoch_probes_every_exit_and_runs_alone():
    sk, plan = skipper(0.0)
    assert sk.skips(plan) == [0]
    plan.step_id = 2 * headskip.EPOCH
    assert sk.skips(plan) == []
    assert sk.run_cap(2 * headskip.EPOCH, [17, 17], 64) == 1
    assert sk.run_cap(2 * headskip.EPOCH - 10, [17, 17], 64) == 10  # a run never crosses into the next epoch


def test_a_run_is_cut_where_the_growing_context_changes_the_decision():
    """Rows whose deep layers cost more as their context grows: at some context bucket the decision
    changes; a planned run ends right there, so each of its steps has the decision a single step would."""
    class KVBound(WeightBoundHead):
        def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
            return W_S + 1e-6 * np.asarray(decode_context, dtype=float) + 0 * np.asarray(num_tokens, dtype=float)

    sk, plan = skipper(0.5)  # skipped at small contexts (see the two-row case), evaluated at larger ones
    sk.cost = KVBound()
    decisions = [sk._decide(2, b) for b in range(200)]
    change = next(b for b in range(1, 200) if decisions[b] != decisions[b - 1])
    ctx = change * headskip.CONTEXT_BUCKET - 5  # 5 steps before the bucket that decides otherwise
    assert sk.run_cap(headskip.EPOCH + 1, [ctx, ctx], 64) == 5
    assert sk.run_cap(headskip.EPOCH + 1, [ctx - 40, ctx - 40], 20) == 20


def test_never_skips_where_an_inline_drain_waits():
    sk, plan = skipper(0.0)
    plan.drain_ids, plan.drain_layer = [99], 2
    assert sk.skips(plan) == []


def test_a_skipped_exit_costs_no_head_and_lets_every_row_go_on():
    """The simulated executor: a plan that skips exit 0 charges no exit head, and no row exits there."""
    from test_decision import Fixed
    from drex.sim.executor import SimExecutor

    s, plan = decoding(WeightBoundHead(), 2)
    ex = SimExecutor(s, WeightBoundHead(), Fixed({0: [0.9, 0.9]}))
    evaluated = ex.execute(plan, 0.0)
    assert evaluated.outcome.exited.all()
    skipped = ex.execute(StepPlan(0, "decode", decode_ids=[0, 1], decode_context=[17, 17], decode_token_index=[10, 10],
                                  skip_exits=[0]), 0.0)
    assert not skipped.outcome.exited.any()
    # Full depth: 4 layers and the top head, no exit head.
    assert np.isclose(skipped.durations_s[0], 4 * W_S + HEAD_S + 1e-6)


def test_drex_stops_paying_heads_nobody_uses():
    """A threshold nobody clears: without skipping drex pays an exit head every step and is slower than off;
    with it, drex comes within 0.5% of off (the probes are what is left)."""
    work = poisson_workload(600, 3000.0, (4, 60), (20, 60), seed=3)
    tput = {}
    for name, kw in {"off": dict(policy="off"), "skip": dict(policy="drex"),
                     "noskip": dict(policy="drex", skip_exit_heads=False)}.items():
        cfg = sim_config(threshold=0.999, confidence="beta:2,2", max_batch_size=32, **kw)
        tput[name] = simulator.simulate(cfg, work).summary["output_throughput"]
    assert tput["noskip"] < 0.98 * tput["off"]
    assert tput["skip"] >= 0.995 * tput["off"]


def test_an_epoch_where_every_probed_size_pays_is_dormant():
    """p = 0.9: evaluating pays for every batch size probed (1, 2, 4, ..., 16 here): no per-plan work, no cut.
    p = 0.5: two rows do not pay (see the two-row case), so the epoch stays awake."""
    sk, plan = skipper(0.9)
    assert sk.dormant and sk.skips(plan) == [] and sk.run_cap(plan.step_id, [17, 17], 64) == 64
    assert sk.run_cap(2 * headskip.EPOCH - 10, [17, 17], 64) == 10  # only the epoch's end cuts a run
    sk, plan = skipper(0.5)
    assert not sk.dormant and sk.skips(plan) == [0]
