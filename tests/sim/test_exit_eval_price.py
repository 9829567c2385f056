"""Learned exits are priced where the real executor pays them: every exit point evaluated costs an exit evaluation
(adapter, norm, estimator, decision) over the rows asked, and rows going on past an exit point where others
stopped cost a regroup; neither is charged where it did not happen."""

import numpy as np
import pytest

from drex.config import EEConfig
from drex.core.policies import get_policy
from drex.core.step import CONTINUE, EXIT, StepPlan
from drex.costmodel.roofline import RooflineCostModel
from drex.models import get_model
from drex.sim.executor import SimExecutor
from drex.validate import _NoConfidence, _Replay

TINY = get_model("tiny")  # 4 layers
EVAL_S, EVAL_ROW_S, REGROUP_S, REGROUP_ROW_S = 3e-3, 1e-4, 2e-3, 5e-4


class _Priced(RooflineCostModel):
    prices_regroup = True

    def exit_eval_s(self, num_rows):
        return np.where(np.asarray(num_rows) > 0, EVAL_S + EVAL_ROW_S * np.asarray(num_rows, dtype=float), 0.0)

    def regroup_s(self, num_rows):
        return np.where(np.asarray(num_rows) > 0, REGROUP_S + REGROUP_ROW_S * np.asarray(num_rows, dtype=float), 0.0)


def _price(cost, actions, metric="learned", policy="drex") -> float:
    replay = _Replay((2,), TINY.num_layers, get_policy(policy), EEConfig((2,), 0.5, metric))
    ex = SimExecutor(replay, cost, _NoConfidence())
    replay.decisions = [[0, list(actions), [False] * 3, [False] * 3, False]]
    plan = StepPlan(step_id=0, kind="decode", decode_ids=[0, 1, 2], decode_context=[20, 30, 40],
                    decode_token_index=[5, 5, 5], num_steps=1)
    return float(ex.execute(plan, 0.0).durations_s[0])


@pytest.mark.parametrize("actions, regrouped", [((CONTINUE,) * 3, 0), ((EXIT, CONTINUE, CONTINUE), 2),
                                                ((EXIT, EXIT, CONTINUE), 1), ((EXIT,) * 3, 0)])
def test_exit_evaluation_and_regroup_are_charged_where_they_happen(actions, regrouped):
    extra = _price(_Priced(TINY, "cpu", 4), actions) - _price(RooflineCostModel(TINY, "cpu", 4), actions)
    want = EVAL_S + 3 * EVAL_ROW_S + (REGROUP_S + regrouped * REGROUP_ROW_S if regrouped else 0.0)
    assert extra == pytest.approx(want, rel=1e-9)


def test_lm_head_exits_charge_no_exit_evaluation():
    actions = (EXIT, CONTINUE, CONTINUE)
    extra = _price(_Priced(TINY, "cpu", 4), actions, "margin") - _price(RooflineCostModel(TINY, "cpu", 4), actions,
                                                                          "margin")
    assert extra == pytest.approx(REGROUP_S + 2 * REGROUP_ROW_S, rel=1e-9)  # the regroup only: the head is head_s


def test_latency_only_rows_keep_computing_no_regroup():
    actions = (EXIT, CONTINUE, CONTINUE)
    extra = (_price(_Priced(TINY, "cpu", 4), actions, policy="latency-only")
             - _price(RooflineCostModel(TINY, "cpu", 4), actions, policy="latency-only"))
    assert extra == pytest.approx(EVAL_S + 3 * EVAL_ROW_S, rel=1e-9)


def test_decode_attention_of_the_whole_batch_where_the_cost_model_says_so():
    """A CPU profile's rows going on past an exit are attended in place among all the step's rows (the decode
    mirror): the deeper segment is priced with the whole batch's context, its matmuls with the rows going on."""
    actions = (EXIT, CONTINUE, CONTINUE)
    plain = RooflineCostModel(TINY, "cpu", 4)
    whole = RooflineCostModel(TINY, "cpu", 4)
    whole.decode_attends_batch = True
    extra = _price(whole, actions) - _price(plain, actions)
    deep = TINY.num_layers - 2  # layers [2, 4) after the exit at 2: rows 1 and 2 go on
    want = deep * (float(plain.layer_s(2.0, 90.0)) - float(plain.layer_s(2.0, 70.0)))  # 20 + 30 + 40 vs 30 + 40
    assert extra == pytest.approx(want, rel=1e-9) and extra > 0
    assert _price(whole, (CONTINUE,) * 3) == pytest.approx(_price(plain, (CONTINUE,) * 3), rel=1e-12)


def test_regroups_are_counted_only_where_a_profile_prices_them():
    """The shipped SmolLM2 profile has a regroup law (the simulator counts regrouped rows); the tiny profile and
    the roofline have none (nothing to count: the executor skips it, for speed)."""
    from pathlib import Path

    from drex.costmodel.load import load_fitted

    profiles = Path(__file__).resolve().parents[2] / "profiles" / "cpu"
    assert load_fitted(profiles / "smollm2").prices_regroup
    assert not load_fitted(profiles / "tiny").prices_regroup
    assert not RooflineCostModel(TINY, "h200").prices_regroup
