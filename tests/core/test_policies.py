"""The six exit policies: their rule at one exit point (property tests on the decide functions), and
what each does over whole simulated runs (forced exits, forced stays, compute saved or not)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import drex.sim.simulator as simulator
from drex.confidence import make_confidence_source
from drex.core.policies import POLICIES, ExitContext, get_policy
from drex.core.step import BUFFER, EXIT
from drex.costmodel.roofline import RooflineCostModel
from drex.models import get_model
from simkit import POLICIES as POLICY_NAMES
from simkit import TINY_LAYERS, FreeHeadRoofline, burst_workload, poisson_workload, sim_config

# --- the rule at one exit point ---------------------------------------------------------------


def test_registry_holds_exactly_the_seven_policies():
    assert set(POLICIES) == set(POLICY_NAMES)
    assert [n for n in POLICY_NAMES if get_policy(n).ideal] == ["bound"]
    assert [n for n in POLICY_NAMES if get_policy(n).rebatches] == ["drex"]
    assert [n for n in POLICY_NAMES if get_policy(n).keeps_batch] == ["latency-only"]
    assert [n for n in POLICY_NAMES if not get_policy(n).uses_exits] == ["off"]
    with pytest.raises(ValueError, match="unknown policy 'nope'.*drex"):
        get_policy("nope")


@st.composite
def exit_contexts(draw):
    k = draw(st.integers(1, 12))
    n = draw(st.integers(1, 6))
    conf = draw(hnp.arrays(np.float64, (k, n), elements=st.floats(0.0, 1.0)))
    active = draw(hnp.arrays(np.bool_, (k, n)))
    threshold = draw(st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]))
    higher = draw(st.booleans())
    pays = draw(hnp.arrays(np.bool_, (k,)))
    drains = draw(hnp.arrays(np.bool_, (k,)))
    base = draw(st.booleans())  # prefill chunks run on to the top (a mixed step)
    calls = {"split": [], "drain": [], "stop": []}

    def split_pays(steps, stay):
        calls["split"].append((np.asarray(steps).copy(), np.asarray(stay).copy()))
        return pays[steps]

    def drain_pays(steps, stop):
        calls["drain"].append(np.asarray(steps).copy())
        calls["stop"].append(np.asarray(stop).copy())
        return drains[steps]

    wants = conf > threshold if higher else conf < threshold
    ctx = ExitContext(2, 4, wants, conf, active, threshold, higher, split_pays, drain_pays, base_continues=base)
    return ctx, pays, drains, calls


def common_checks(ctx, d):
    act = ctx.active
    assert d.actions.shape == act.shape and d.forced.shape == act.shape and d.stayed.shape == act.shape
    assert d.drain.shape == (act.shape[0],)
    ex = (d.actions == EXIT) & act
    assert not (d.forced & ~act).any() and not (d.stayed & ~act).any()
    assert not (d.actions[~act] == EXIT).any() and not (d.actions[~act] == BUFFER).any()
    # Involuntary exit: made to exit without clearing the threshold; involuntary stay: the reverse.
    assert (d.forced == (ex & ~ctx.wants)).all()
    assert not (d.stayed & ~ctx.wants).any() and not (d.stayed & ex).any()
    return ex


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(case=exit_contexts())
def test_lockstep_policies(case):
    ctx, _, _, _ = case
    act, want = ctx.active, ctx.wants & ctx.active
    for name in ("off", "eager", "lazy", "average"):
        d = get_policy(name).decide(ctx)
        ex = common_checks(ctx, d)
        assert not (d.actions == BUFFER).any() and not d.drain.any()
        batch_exit = {
            "off": np.zeros(act.shape[0], dtype=bool),
            "eager": want.any(axis=1),
            "lazy": act.any(axis=1) & (want == act).all(axis=1),
            "average": np.array([
                bool(a.any()) and (c[a].mean() > ctx.threshold if ctx.higher_is_better else c[a].mean() < ctx.threshold)
                for c, a in zip(ctx.confidence, act)]),
        }[name]
        # The whole batch moves together: every active row exits, or none does.
        assert (ex == (batch_exit[:, None] & act)).all(), name
        assert (d.stayed == (~batch_exit[:, None] & want)).all(), name
        if name in ("off", "lazy"):
            assert not d.forced.any()


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(case=exit_contexts())
def test_latency_only_emits_exactly_the_confident_rows(case):
    ctx, _, _, _ = case
    d = get_policy("latency-only").decide(ctx)
    ex = common_checks(ctx, d)
    assert (ex == (ctx.wants & ctx.active)).all()
    assert not d.forced.any() and not d.stayed.any() and not (d.actions == BUFFER).any()


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(case=exit_contexts())
def test_drex_splits_never_forces(case):
    ctx, pays, drains, calls = case
    d = get_policy("drex").decide(ctx)
    ex = common_checks(ctx, d)
    act = ctx.active
    want = ctx.wants & act
    buf = (d.actions == BUFFER) & act
    assert not d.forced.any(), "drex never forces an exit"
    assert not (ex & ~want).any() and not (buf & want).any()
    n_act, n_want = act.sum(axis=1), want.sum(axis=1)
    partial = (n_want > 0) & (n_want < n_act)
    # A parking step ends the run (StepOutcome.record cuts there): the steps after the first one are not decided.
    parks = np.flatnonzero(partial & pays)
    end = int(parks[0]) + 1 if len(parks) else act.shape[0]
    for j in range(end):
        if n_act[j] and n_want[j] == n_act[j]:  # everyone wants: all leave, nothing parked
            assert ex[j].sum() == n_act[j] and not buf[j].any()
        elif n_want[j] == 0:  # nobody wants: the batch goes on, maybe picking up the buffer
            assert not ex[j].any() and not buf[j].any()
            # Inline drain joins parked rows onto a live batch (DESIGN.md): none left here, no drain.
            assert d.drain[j] == (drains[j] and n_act[j] > 0)
        elif pays[j]:  # a paying split: the confident leave, the others wait in the buffer
            assert (ex[j] == want[j]).all() and (buf[j] == (act[j] & ~want[j])).all()
        else:  # a split that does not pay: everyone goes on; the confident stayed involuntarily
            assert not ex[j].any() and not buf[j].any() and (d.stayed[j] == want[j]).all()
        if ctx.base_continues:  # prefill chunks carry drained rows whatever the decode rows do
            assert d.drain[j] == (drains[j] and n_act[j] > 0)
        elif ex[j].any() or buf[j].any():
            assert not d.drain[j]
    # The profitability callbacks are asked only about the steps they concern, each once, up to the run's end.
    asked = np.concatenate([s for s, _ in calls["split"]]) if calls["split"] else np.array([], int)
    assert len(set(asked.tolist())) == len(asked) and set(asked.tolist()) <= set(np.flatnonzero(partial).tolist())
    assert set(np.flatnonzero(partial[:end]).tolist()) <= set(asked.tolist())
    for steps, stay in calls["split"]:
        assert (stay == (act & ~want)[steps]).all()
    stop = ((n_want == n_act) & (n_act > 0)) | (partial & pays)  # no decode row goes on past the exit
    rides = (~stop | ctx.base_continues) & (n_act > 0)
    rides[end if ctx.base_continues else end - (len(parks) > 0):] = False  # a parking step drains only on prefill
    asked = np.concatenate(calls["drain"]) if calls["drain"] else np.array([], int)
    assert sorted(asked.tolist()) == np.flatnonzero(rides).tolist()
    told = np.concatenate(calls["stop"]) if calls["stop"] else np.array([], bool)
    assert (told == stop[asked]).all()


# --- whole runs ---------------------------------------------------------------------------------

# Enough load that decode batches hold several rows; beta(2,2) around threshold 0.5: rows disagree.
WORKLOAD = poisson_workload(120, rate=400, prompt=(4, 48), output=(4, 40), seed=11)


@pytest.fixture(scope="module")
def runs():
    return {p: simulator.simulate(sim_config(p), WORKLOAD) for p in POLICY_NAMES}


@pytest.mark.slow
def test_runs_complete_with_full_batches(runs):
    for p, r in runs.items():
        assert r.summary["completed"] == len(WORKLOAD) and r.summary["failed"] == 0, p
        assert (r.requests.generated_tokens == r.requests.output_tokens).all(), p
        dec = r.steps[r.steps.num_decode > 0].num_decode
        assert dec.max() >= 6 and dec.mean() > 3, f"{p}: batches too small to tell policies apart"


def test_drex_has_no_involuntary_exits(runs):
    # Evaluating every exit head, drex parks rows here; skipping the heads it judges useless, it parks none
    # (and gains more): neither way forces anyone out.
    every_head = simulator.simulate(sim_config("drex", skip_exit_heads=False), WORKLOAD)
    for r in (runs["drex"], every_head):
        assert (r.requests.involuntary_exits == 0).all()
        assert r.summary["involuntary_exits"] == 0
        assert r.summary["early_exit_fraction"] > 0
    assert every_head.summary["num_rebatches"] > 0


@pytest.mark.parametrize("settings_", [
    dict(exits=(2,), confidence="beta:4,2"),
    dict(exits=(1, 2, 3), confidence="beta:4,2/4,2/4,2", profitability="knobs", max_tpot_inflation=float("inf")),
    dict(exits=(2,), confidence="beta:4,2", profitability="art"),
    dict(exits=(2,), confidence="beta:4,2", inline_drain=False, profitability="knobs"),
    dict(exits=(1, 3), confidence="beta:4,2/5,2", max_batch_size=16, profitability="knobs",
         max_tpot_inflation=float("inf")),
], ids=["one-exit", "three-exits", "art", "no-drain", "two-exits-batch-16"])
def test_drex_never_forces_an_exit_while_rebatching(settings_):
    r = simulator.simulate(sim_config("drex", **settings_), WORKLOAD)
    q = r.requests
    assert (q.status == "finished").all() and (q.generated_tokens == q.output_tokens).all()
    assert (q.involuntary_exits == 0).all()
    assert r.summary["early_exit_fraction"] > 0.05 and r.summary["num_rebatches"] > 0
    # Every parked row came back, by a flush or an inline drain.
    assert r.summary["num_flushes"] + r.summary["num_drains"] > 0
    if settings_.get("inline_drain") is False:
        assert r.summary["num_drains"] == 0 and r.summary["num_flushes"] > 0


@pytest.mark.parametrize("policy", ["eager", "average"])
def test_eager_and_average_force_exits(runs, policy):
    r = runs[policy]
    assert r.summary["involuntary_exits"] > 0
    assert (r.requests.involuntary_exits <= r.requests.early_exits).all()
    assert r.summary["involuntary_exits"] == r.requests.involuntary_exits.sum()


def test_eager_never_holds_back_a_confident_row(runs):
    assert runs["eager"].summary["involuntary_stays"] == 0


def test_lazy_forces_no_exit_but_holds_rows_back(runs):
    r = runs["lazy"]
    assert (r.requests.involuntary_exits == 0).all()
    assert r.summary["involuntary_stays"] > 0
    assert r.summary["early_exit_fraction"] < runs["latency-only"].summary["early_exit_fraction"]


def test_off_never_exits(runs):
    r = runs["off"]
    assert r.summary["early_exit_fraction"] == 0.0
    assert r.summary["mean_exit_layer"] == TINY_LAYERS
    assert (r.requests.mean_exit_layer == TINY_LAYERS).all()
    assert (r.requests[["early_exits", "involuntary_exits", "involuntary_stays"]] == 0).all().all()
    assert (r.steps.layer_end == TINY_LAYERS).all() and (r.steps.num_exited == 0).all()


@pytest.mark.parametrize("policy", ["eager", "lazy", "average", "latency-only", "drex"])
def test_exit_counts_match_the_confidence_source(runs, policy):
    """One exit point: a decode token whose confidence cleared the threshold either exited or stayed
    involuntarily, and a token that exited without clearing it was forced; so per request
    early - forced + stays == the tokens that wanted to exit, recomputed from the source itself. (drex
    evaluating every head; where it skips a head, the tokens that would have cleared it are not counted.)"""
    cfg = sim_config(policy)
    src = make_confidence_source(cfg.confidence, cfg.ee.exits, TINY_LAYERS, cfg.seed)
    q = runs[policy].requests
    if policy == "drex":
        skipped = q
        q = simulator.simulate(sim_config(policy, skip_exit_heads=False), WORKLOAD).requests
    assert (q.preemptions == 0).all()
    wanted = np.array([int((src.confidence(np.full(o - 1, rid), np.arange(1, o), 0) > cfg.ee.threshold).sum())
                       for rid, o in zip(q.request_id, q.output_tokens)])
    got = (q.early_exits - q.involuntary_exits + q.involuntary_stays).to_numpy()
    assert (got == wanted).all(), np.flatnonzero(got != wanted)
    if policy == "drex":
        assert ((skipped.early_exits + skipped.involuntary_stays).to_numpy() <= wanted).all()
    # Tokens that exit come out at the exit layer, the others at full depth.
    e = cfg.ee.exits[0]
    layers = q.mean_exit_layer * q.generated_tokens
    assert np.allclose(layers, q.early_exits * e + (q.generated_tokens - q.early_exits) * TINY_LAYERS)


@pytest.mark.parametrize("policy", ["lazy", "latency-only", "drex"])
def test_multi_exit_counts_match_the_confidence_source(policy):
    """Several exit points: a token exits only where it cleared the threshold, so early <= wanted (it
    cleared one somewhere). Without a buffer a token meets every exit point until it leaves, so one that
    cleared the threshold somewhere either exited or was held back there: wanted <= early + stays
    (under drex a parked token skips the exit heads after its exit point, so only the first bound holds).
    latency-only emits at the first exit point cleared, so early == wanted."""
    exits = (1, 2, 3)
    cfg = sim_config(policy, exits=exits, confidence="beta:2,2/2,2/2,2")
    res = simulator.simulate(cfg, WORKLOAD)
    src = make_confidence_source(cfg.confidence, exits, TINY_LAYERS, cfg.seed)
    q = res.requests
    assert (q.preemptions == 0).all() and (q.involuntary_exits == 0).all()
    wanted = []
    for rid, o in zip(q.request_id, q.output_tokens):
        tok = np.arange(1, o)
        clears = np.zeros(len(tok), dtype=bool)
        for i in range(len(exits)):
            clears |= src.confidence(np.full(len(tok), rid), tok, i) > cfg.ee.threshold
        wanted.append(int(clears.sum()))
    wanted = np.array(wanted)
    early, stays = q.early_exits.to_numpy(), q.involuntary_stays.to_numpy()
    assert (early <= wanted).all() and early.sum() > 0
    if policy == "latency-only":
        assert (early == wanted).all()
    if policy != "drex":
        lost = np.flatnonzero(wanted > early + stays)
        assert len(lost) == 0, f"requests {q.request_id.to_numpy()[lost].tolist()} lost involuntary stays"


# --- latency-only saves nothing ----------------------------------------------------------------


def test_latency_only_runs_every_step_at_full_depth(runs):
    r = runs["latency-only"]
    assert r.summary["early_exit_fraction"] > 0.05 and (r.requests.early_exits > 0).sum() > 10
    assert (r.steps.layer_end == TINY_LAYERS).all()
    assert r.summary["num_rebatches"] == 0 and r.summary["involuntary_exits"] == 0


def test_latency_only_costs_what_off_costs_when_heads_are_free():
    """With free exit heads, exiting early must not change a single step: same batches, same
    layer ranges, same durations, same times; only the emitted tokens come sooner."""
    cost = FreeHeadRoofline(get_model("tiny"), "cpu")
    off = simulator.simulate(sim_config("off", exits=(1, 2, 3)), WORKLOAD, cost=cost)
    lo = simulator.simulate(sim_config("latency-only", exits=(1, 2, 3)), WORKLOAD, cost=cost)
    assert lo.summary["early_exit_fraction"] > 0.05
    a, b = off.steps.drop(columns="num_exited"), lo.steps.drop(columns="num_exited")
    assert a.shape == b.shape
    exact = [c for c in a.columns if c not in ("time_s", "duration_ms")]
    assert (a[exact].to_numpy() == b[exact].to_numpy()).all()
    assert np.allclose(a.duration_ms, b.duration_ms, rtol=1e-12, atol=0)
    assert np.allclose(a.time_s, b.time_s, rtol=1e-12, atol=0)
    qa, qb = off.requests, lo.requests
    assert np.allclose(qa.ttft_ms, qb.ttft_ms, rtol=1e-12)
    assert (qb.e2el_ms <= qa.e2el_ms * (1 + 1e-12)).all()  # tokens come out early, never late
    assert (qb.e2el_ms < qa.e2el_ms * (1 - 1e-9)).any()


def test_latency_only_costs_off_plus_exit_heads():
    """All requests at t=0, so the batches cannot depend on step durations: step by step, latency-only
    costs exactly what off costs plus its exit heads (at least one head over the batch, at most one per
    exit point)."""
    work = burst_workload(60, seed=5)
    exits = (1, 2, 3)
    off = simulator.simulate(sim_config("off", exits=exits, confidence="beta:2,2/2,2/2,2"), work)
    lo = simulator.simulate(sim_config("latency-only", exits=exits, confidence="beta:2,2/2,2/2,2"), work)
    assert lo.summary["early_exit_fraction"] > 0.05
    a, b = off.steps, lo.steps
    same = ["step", "kind", "num_rows", "num_decode", "num_prefill_tokens", "num_flush", "layer_end"]
    assert a.shape == b.shape and (a[same].to_numpy() == b[same].to_numpy()).all()
    assert (b.layer_end == TINY_LAYERS).all()
    head_ms = np.asarray(RooflineCostModel(get_model("tiny"), "cpu").head_s(b.num_decode.to_numpy())) * 1e3
    extra = (b.duration_ms - a.duration_ms).to_numpy()
    assert np.all(extra >= head_ms * (1 - 1e-9) - 1e-12)
    assert np.all(extra <= len(exits) * head_ms * (1 + 1e-9) + 1e-12)
    assert np.all(extra[b.num_decode.to_numpy() == 0] == 0)
