"""Confidence sources: Beta draws are per (request, token, exit) whatever the batching; a recorded trace
replays exactly; malformed traces fail naming the file (and the line and field where there is one)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import drex.sim.simulator as simulator
from drex.confidence import BetaConfidence, TraceConfidence, make_confidence_source
from simkit import TINY_LAYERS, poisson_workload, sim_config


def test_beta_draws_do_not_depend_on_batching():
    src = make_confidence_source("beta:2,3", (1, 2), TINY_LAYERS, seed=4)
    ids = np.arange(50)
    tok = np.arange(50) % 7
    whole = src.confidence(ids, tok, 1)
    one_by_one = np.array([src.confidence(ids[i:i + 1], tok[i:i + 1], 1)[0] for i in range(50)])
    assert np.array_equal(whole, one_by_one)
    block = src.confidence(ids[None, :].repeat(3, 0), tok[None, :] + np.arange(3)[:, None], 1)
    assert np.array_equal(block[0], whole)
    assert not np.array_equal(src.confidence(ids, tok, 0), whole), "exit points draw independently"
    other = make_confidence_source("beta:2,3", (1, 2), TINY_LAYERS, seed=5)
    assert not np.array_equal(other.confidence(ids, tok, 1), whole), "the seed matters"


def test_one_step_lookups_are_the_draws_themselves():
    """A step's draws (one token a row) are looked up from rows drawn ahead; they must be the very values a
    direct draw gives, for tokens within and past what was drawn, after a request is forgotten, and at a
    token before 0; a run of steps is drawn directly."""
    rng = np.random.default_rng(4)
    src = BetaConfidence([(2.5, 2.0), (3.0, 1.5)], 2, seed=9)
    ref = BetaConfidence([(2.5, 2.0), (3.0, 1.5)], 2, seed=9)
    for i in range(300):
        ids = rng.choice(40, size=int(rng.integers(1, 12)), replace=False).astype(np.int64)
        tok = rng.integers(-1 if i % 50 == 0 else 0, 3 * BetaConfidence.AHEAD, size=(1, len(ids)))
        e = i % 2
        got = src.confidence(ids, tok, e)
        assert got.shape == tok.shape and got.tobytes() == ref._draw(ids, tok, e).tobytes()
        if i % 7 == 0:
            src.forget(ids[:2].tolist())
    held = np.array(sorted(src._drawn[0])[:5], dtype=np.int64)  # requests with drawn rows, asked before token 0
    minus = np.full((1, len(held)), -1)
    assert len(held) and src.confidence(held, minus, 0).tobytes() == ref._draw(held, minus, 0).tobytes()
    tok = rng.integers(0, 500, size=(5, 8))
    ids = np.arange(8, dtype=np.int64)
    assert src.confidence(ids, tok, 1).tobytes() == ref._draw(ids, tok, 1).tobytes()
    assert sum(len(d) for d in src._drawn) > 0
    src.forget(list(range(40)))
    assert sum(len(d) for d in src._drawn) == 0


@pytest.mark.parametrize("a,b", [(2.0, 2.0), (4.0, 2.0), (0.5, 0.5)])
def test_beta_draws_follow_the_distribution(a, b):
    src = BetaConfidence([(a, b)], 1, seed=1)
    x = src.confidence(np.arange(20000) // 50, np.arange(20000) % 50, 0)
    assert stats.kstest(x, stats.beta(a, b).cdf).pvalue > 1e-3


def test_default_beta_is_more_confident_deeper():
    src = make_confidence_source("beta", (1, 2, 3), TINY_LAYERS, seed=0)
    ids, tok = np.arange(5000), np.zeros(5000, dtype=int)
    means = [src.confidence(ids, tok, i).mean() for i in range(3)]
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize("spec", ["beta:1", "beta:1,2,3", "beta:a,b", "beta:-1,2", "beta:1,2/3,4/5,6", "gauss", "trace:"])
def test_bad_confidence_specs(spec):
    with pytest.raises(ValueError):
        make_confidence_source(spec, (1, 2), TINY_LAYERS, seed=0)


def write_trace(path, rows):
    path.write_text("request_id,token_index,exit_layer,confidence\n"
                    + "".join(f"{r},{t},{e},{c}\n" for r, t, e, c in rows))
    return path


def test_trace_replays_recorded_confidences(tmp_path):
    rows = [(r, t, e, round(0.1 * r + 0.01 * t + 0.001 * e, 4)) for r in (3, 7) for t in range(4) for e in (1, 3)]
    rows.remove((7, 2, 3, round(0.7 + 0.02 + 0.003, 4)))  # token 2 of request 7 never reached exit 3
    src = TraceConfidence(write_trace(tmp_path / "c.csv", rows), (1, 3))
    assert src.confidence(np.array([3, 7]), np.array([1, 1]), 0) == pytest.approx([0.311, 0.711])
    assert src.confidence(np.array([3]), np.array([2]), 1) == pytest.approx([0.323])
    assert np.isnan(src.confidence(np.array([7]), np.array([2]), 1)[0])
    # Token indices wrap around the recorded length; unknown ids map by id modulo the request count.
    assert src.confidence(np.array([3]), np.array([5]), 0) == pytest.approx([0.311])
    assert src.confidence(np.array([4, 5]), np.array([0, 0]), 0) == pytest.approx([0.301, 0.711 - 0.01])


def test_simulation_replays_a_trace_exactly(tmp_path):
    """A trace in which every token of even requests is sure at the exit and every token of odd ones
    is not: under latency-only, exactly the even requests' decode tokens exit early."""
    work = poisson_workload(40, rate=300, prompt=(4, 32), output=(2, 30), seed=2)
    rows = [(w.request_id, t, 2, 0.99 if w.request_id % 2 == 0 else 0.01)
            for w in work for t in range(w.output_tokens)]
    path = write_trace(tmp_path / "conf.csv", rows)
    res = simulator.simulate(sim_config("latency-only", confidence=f"trace:{path}", threshold=0.8), work)
    q = res.requests
    even = q.request_id % 2 == 0
    assert (q.early_exits[even] == q.output_tokens[even] - 1).all()
    assert (q.early_exits[~even] == 0).all()
    assert res.summary["confidence_source"] == f"trace:{path}"


HEADER = "request_id,token_index,exit_layer,confidence\n"


@pytest.mark.parametrize("text,where", [
    ("", None),
    (HEADER, None),
    ("request_id,token_index,exit_layer\n0,0,2\n", ("1", "confidence")),
    ("request_id,token,exit_layer,confidence\n0,0,2,0.5\n", ("1", "token_index")),
    (HEADER + "0,0,2,0.5\n0,1,2,high\n", ("3", "confidence")),
    (HEADER + "0,0,2,0.5\n1,0,two,0.5\n", ("3", "exit_layer")),
    (HEADER + "0,0,3,0.5\n", None),  # no confidence at the exit asked for
])
def test_malformed_trace_errors_name_the_file(tmp_path, text, where):
    path = tmp_path / "bad_conf.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as exc:
        TraceConfidence(path, (2,))
    msg = str(exc.value)
    assert str(path) in msg
    if where:
        line, field = where
        assert f"line {line}" in msg or f"{path}:{line}:" in msg
        assert field in msg


@pytest.mark.parametrize("text,line", [
    (HEADER + "0,0,2,0.5\n0,,2,0.4\n", 3),  # blank token index
    (HEADER + "0,0,2,0.5\n0,-3,2,0.4\n", 3),  # negative token index
    (HEADER + "0,0,2,0.5\n0,1.5,2,0.4\n", 3),  # fractional token index
    (HEADER + "0,0,2,0.5\n,1,2,0.4\n", 3),  # blank request id
    (HEADER + "0,0,2,0.5,9\n", 2),  # a row with one field too many
], ids=["blank-token", "negative-token", "fractional-token", "blank-request", "extra-field"])
def test_bad_indices_in_a_trace_are_located(tmp_path, text, line):
    path = tmp_path / "bad_conf.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as exc:
        TraceConfidence(path, (2,))
    msg = str(exc.value)
    assert str(path) in msg and (f"line {line}" in msg or f"{path}:{line}:" in msg), msg


def test_missing_trace_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        make_confidence_source(f"trace:{tmp_path / 'nope.csv'}", (2,), TINY_LAYERS, seed=0)
