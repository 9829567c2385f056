"""Exit policies, registered by name: what a decode batch does at an exit point.

A policy sees one exit point for a run of planned steps at once (k steps x n
rows; k = 1 in the real backend) and returns an action per row: EXIT (emit the
exit head's token now), CONTINUE (go deeper) or BUFFER (park in the
rebatching buffer; only ``drex`` does this). Adding a policy touches only
this file.

Involuntary exit: a row made to EXIT although its confidence did not clear the
threshold. Involuntary stay: a row that cleared it but was made to CONTINUE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from drex.core.step import BUFFER, CONTINUE, EXIT


@dataclass
class ExitContext:
    exit_layer: int
    num_layers: int
    wants: np.ndarray  # bool [k, n]: confidence clears the threshold
    confidence: np.ndarray  # float [k, n]
    active: np.ndarray  # bool [k, n]: rows still going at this exit
    threshold: float
    higher_is_better: bool
    # Whether splitting pays at the given steps, whose staying rows are stay [len(steps), n] -> bool.
    split_pays: Callable[[np.ndarray, np.ndarray], np.ndarray]
    # Whether buffered rows waiting at this exit should join the rows going on at the given steps, where
    # stop [len(steps)] says no decode row goes on past the exit (they ride with the prefill chunks) -> bool.
    drain_pays: Callable[[np.ndarray, np.ndarray], np.ndarray]
    # drex: the best split action at the given steps (HOLD, PARK or GO, int8 [len(steps)]); None: PARK where
    # split_pays says so.
    split_action: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    # The steps' prefill chunks run on to the top whatever the decode rows do (a mixed step): buffered rows can
    # ride with them even where every decode row exits or parks.
    base_continues: bool = False


# What a split does with the rows that must go deeper: HOLD (no split: everyone continues, the confident rows
# stay involuntarily), PARK (they wait in the rebatching buffer) or GO (split-and-continue: they go on at once
# in a smaller batch while the confident rows exit).
HOLD, PARK, GO = 0, 1, 2


@dataclass
class PolicyDecision:
    actions: np.ndarray  # int8 [k, n]
    forced: np.ndarray  # bool [k, n]
    stayed: np.ndarray  # bool [k, n]
    drain: np.ndarray  # bool [k]


@dataclass(frozen=True)
class Policy:
    name: str
    decide: Callable[[ExitContext], PolicyDecision]
    uses_exits: bool = True  # False: exit heads never run
    keeps_batch: bool = False  # True: exiting rows still run full depth (latency-only)
    rebatches: bool = False  # has a rebatching buffer
    ideal: bool = False  # an upper bound, not a schedule: the simulator prices it as free, perfect rebatching


POLICIES: dict[str, Policy] = {}


def register(name: str, **flags) -> Callable:
    def wrap(fn: Callable[[ExitContext], PolicyDecision]) -> Callable:
        POLICIES[name] = Policy(name, fn, **flags)
        return fn

    return wrap


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


def _lockstep(ctx: ExitContext, batch_exits: np.ndarray) -> PolicyDecision:
    """The whole batch exits (where batch_exits) or continues together."""
    act = ctx.active
    exit_rows = batch_exits[:, None] & act
    actions = np.where(exit_rows, EXIT, CONTINUE).astype(np.int8)
    forced = exit_rows & ~ctx.wants
    stayed = ~batch_exits[:, None] & act & ctx.wants
    return PolicyDecision(actions, forced, stayed, np.zeros(len(batch_exits), dtype=bool))


@register("off", uses_exits=False)
def off(ctx: ExitContext) -> PolicyDecision:
    return _lockstep(ctx, np.zeros(ctx.active.shape[0], dtype=bool))


@register("eager")
def eager(ctx: ExitContext) -> PolicyDecision:
    """Exit if anyone wants to: the others are forced out."""
    return _lockstep(ctx, (ctx.wants & ctx.active).any(axis=1))


@register("lazy")
def lazy(ctx: ExitContext) -> PolicyDecision:
    """Exit only by consensus."""
    any_active = ctx.active.any(axis=1)
    return _lockstep(ctx, any_active & (ctx.wants | ~ctx.active).all(axis=1))


@register("average")
def average(ctx: ExitContext) -> PolicyDecision:
    """Exit if the batch's mean confidence clears the threshold."""
    n = ctx.active.sum(axis=1)
    mean = np.where(ctx.active, ctx.confidence, 0.0).sum(axis=1) / np.maximum(n, 1)
    clears = mean > ctx.threshold if ctx.higher_is_better else mean < ctx.threshold
    return _lockstep(ctx, clears & (n > 0))


@register("latency-only", keeps_batch=True)
def latency_only(ctx: ExitContext) -> PolicyDecision:
    """Confident rows emit their token now; the batch still runs full depth (no compute saved)."""
    exit_rows = ctx.wants & ctx.active
    actions = np.where(exit_rows, EXIT, CONTINUE).astype(np.int8)
    none = np.zeros_like(exit_rows)
    return PolicyDecision(actions, none, none.copy(), np.zeros(exit_rows.shape[0], dtype=bool))


@register("bound", ideal=True)
def bound(ctx: ExitContext) -> PolicyDecision:
    """Idealised upper bound (simulator only): every token exits at its first confident exit point, and the
    simulator charges it only the layers it ran, at the full batch's cost per row-layer (see SimExecutor)."""
    exit_rows = ctx.wants & ctx.active
    actions = np.where(exit_rows, EXIT, CONTINUE).astype(np.int8)
    none = np.zeros_like(exit_rows)
    return PolicyDecision(actions, none, none.copy(), np.zeros(exit_rows.shape[0], dtype=bool))


@register("drex", rebatches=True)
def drex(ctx: ExitContext) -> PolicyDecision:
    """Dynamic rebatching: at a partial exit, hold, park the rows that must go deeper, or let them go on.

    Nobody is ever forced to exit. The split action comes from ``split_action`` (the decider weighs every
    action with the cost model) or, without it, PARK where ``split_pays``. Where the batch holds (or nobody
    exits), the whole batch continues and may pick up buffered rows (inline drain).
    """
    return _drex_one(ctx) if ctx.active.shape[0] == 1 else _drex_steps(ctx)


def _drex_steps(ctx: ExitContext) -> PolicyDecision:
    """``drex`` for a run of planned steps, all at once."""
    act = ctx.active
    want = ctx.wants & act
    n_act = act.sum(axis=1)
    n_want = want.sum(axis=1)
    all_exit = (n_want == n_act) & (n_act > 0)
    partial = (n_want > 0) & ~all_exit
    stay = act & ~want
    choice = np.zeros(len(partial), dtype=np.int8)  # HOLD (0)
    if partial.any():
        idx = partial.nonzero()[0]
        if ctx.split_action is not None:
            choice[idx] = ctx.split_action(idx, stay[partial])
        else:
            choice[idx] = np.where(ctx.split_pays(idx, stay[partial]), PARK, HOLD)
    split = choice == PARK
    exits = (all_exit | (choice != HOLD))[:, None] & want
    buffered = split[:, None] & stay
    actions = np.full(act.shape, CONTINUE, dtype=np.int8)
    actions[exits] = EXIT
    actions[buffered] = BUFFER
    stayed = (partial & (choice == HOLD))[:, None] & want
    # Drained rows need rows going on to ride with: live decode rows, or a mixed step's prefill chunks (then
    # the old parked rows leave the buffer at the exit where new ones enter it).
    stop = all_exit | split
    rides = (n_act > 0) & (~stop | ctx.base_continues)
    if split.any():  # a parking step ends the run (StepOutcome.record cuts there)
        rides[split.nonzero()[0][0] + int(ctx.base_continues):] = False
    drain = np.zeros(len(rides), dtype=bool)
    if rides.any():
        drain[rides] = ctx.drain_pays(rides.nonzero()[0], stop[rides])
    return PolicyDecision(actions, np.zeros(act.shape, dtype=bool), stayed, drain)


_STEP0 = np.zeros(1, dtype=np.intp)  # the one step's index, and the one step's stop flags (read only)
_STOP = {flag: np.array([flag]) for flag in (False, True)}
for _a in (_STEP0, *_STOP.values()):
    _a.flags.writeable = False


def _drex_one(ctx: ExitContext) -> PolicyDecision:
    """``drex`` for one planned step (the commonest call), on the step's row vector: the same decision."""
    act = ctx.active[0]
    want = ctx.wants[0] & act
    n_act, n_want = int(np.count_nonzero(act)), int(np.count_nonzero(want))
    all_exit = n_want == n_act and n_act > 0
    partial = n_want > 0 and not all_exit
    stay = act & ~want
    choice = HOLD
    if partial:
        if ctx.split_action is not None:
            choice = int(ctx.split_action(_STEP0, stay[None])[0])
        else:
            choice = PARK if ctx.split_pays(_STEP0, stay[None])[0] else HOLD
    actions = np.full((1, len(act)), CONTINUE, dtype=np.int8)
    if all_exit or choice != HOLD:
        actions[0, want] = EXIT
    if choice == PARK:
        actions[0, stay] = BUFFER
    stayed = (want if partial and choice == HOLD else np.zeros_like(want))[None]
    stop = all_exit or choice == PARK
    drain = np.zeros(1, dtype=bool)
    if n_act > 0 and (not stop or ctx.base_continues):
        drain[0] = ctx.drain_pays(_STEP0, _STOP[stop])[0]
    return PolicyDecision(actions, np.zeros(actions.shape, dtype=bool), stayed, drain)
