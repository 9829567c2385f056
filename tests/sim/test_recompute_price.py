"""KV fill by recompute is priced where the real executor pays it: the exited token's skipped layers, at its
request's next step (drex validate sets it from the run it replays)."""

import numpy as np

from drex.config import EEConfig
from drex.core.policies import get_policy
from drex.core.step import CONTINUE, EXIT, StepPlan
from drex.costmodel.roofline import RooflineCostModel
from drex.models import get_model
from drex.sim.executor import SimExecutor
from drex.validate import _NoConfidence, _Replay

TINY = get_model("tiny")  # 4 layers


def _plan(context):
    return StepPlan(step_id=0, kind="decode", decode_ids=[0, 1], decode_context=list(context), decode_token_index=[5, 5],
                    num_steps=1)


def _price(recompute: bool, first_action: int) -> list[float]:
    replay = _Replay((2,), TINY.num_layers, get_policy("drex"), EEConfig((2,), 0.5, "margin"))
    cost = RooflineCostModel(TINY, "cpu", 4)
    ex = SimExecutor(replay, cost, _NoConfidence())
    ex.recompute_fill = recompute
    out = []
    for step, action in enumerate((first_action, CONTINUE, CONTINUE)):  # row 0 exits (or not) in step 0 only
        replay.decisions = [[0, [action, CONTINUE], [False, False], [False, False], False]]
        out.append(float(ex.execute(_plan([20 + step, 30 + step]), 0.0).durations_s[0]))
    return out


def test_recompute_charges_the_skipped_layers_at_the_next_step_only():
    cost = RooflineCostModel(TINY, "cpu", 4)
    plain = _price(True, CONTINUE)
    exited = _price(True, EXIT)
    skipped = (TINY.num_layers - 2) * float(cost.layer_s(1.0, 20.0))
    assert exited[0] < plain[0]  # the exit step itself is cheaper: row 0 skipped layers [2, 4)
    assert np.isclose(exited[1] - plain[1], skipped, rtol=0.05)  # and pays them back next step
    assert np.isclose(exited[2], plain[2])  # once
    copy = _price(False, EXIT)
    assert np.isclose(copy[1], plain[1]) and copy[0] > exited[0]  # state copy: a scatter in the exit step
