"""The profiler end to end on the real backend's modules (tiny model, a handful of points, CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from drex.costmodel import profile as pf  # noqa: E402
from drex.real import profiler  # noqa: E402
from drex.real.bench import Bench  # noqa: E402
from drex.models import MODELS  # noqa: E402

SHAPE = MODELS["tiny"]
POINTS = [
    pf.Point("layer_decode", "fit", 4, 128), pf.Point("layer_decode", "held", 2, 64),
    pf.Point("attn_decode", "fit", 4, 128), pf.Point("attn_decode", "held", 2, 64),
    pf.Point("layer_prefill", "fit", 1, 32, 16), pf.Point("layer_prefill", "held", 1, 0, 8),
    pf.Point("attn_prefill", "fit", 1, 32, 16), pf.Point("attn_prefill", "held", 1, 0, 8),
    pf.Point("mlp", "fit", 4), pf.Point("mlp", "held", 2),
    pf.Point("head", "fit", 4), pf.Point("head", "held", 2),
    pf.Point("buffer", "fit", 4), pf.Point("buffer", "held", 2),
    pf.Point("step", "fit", 4), pf.Point("step", "held", 2),
    pf.Point("kv_copy", "fit", 4, num_layers=3), pf.Point("kv_copy", "held", 2, num_layers=1),
    pf.Point("exit_eval", "fit", 4), pf.Point("exit_eval", "held", 2),
    pf.Point("regroup", "fit", 4), pf.Point("regroup", "held", 2),
]


def test_every_op_runs_on_the_real_modules():
    with torch.inference_mode():
        bench = Bench(SHAPE, "fp32", "cpu", POINTS)
        for p in POINTS:
            bench.fn(p)()
        h = bench.fn(pf.Point("layer_decode", "fit", 4, 128))()
        assert h.shape == (4, SHAPE.hidden_size) and torch.isfinite(h).all()


def test_step_and_exit_eval_time_decode_steps(monkeypatch):
    """``step`` and ``exit_eval`` time real decode steps of all their rows (the scheduler is told of each step,
    so it does not plan the same prefill again and again); ``exit_eval`` runs every exit's estimator."""
    import drex.real.benchsteps as bench_mod
    from drex.real.executor import RealExecutor

    kinds, estimated = [], []
    execute, estimate = RealExecutor.execute, bench_mod.NoLayers.estimate
    monkeypatch.setattr(RealExecutor, "execute",
                        lambda self, plan, now, until=float("inf"): kinds.append((plan.kind, len(plan.decode_ids)))
                        or execute(self, plan, now, until))
    monkeypatch.setattr(bench_mod.NoLayers, "estimate",
                        lambda self, x, e: estimated.append((e, x.shape[0])) or estimate(self, x, e))
    with torch.inference_mode():
        bench = Bench(SHAPE, "fp32", "cpu", POINTS)
        step = bench.fn(pf.Point("step", "fit", 4))
        kinds.clear()
        times = [step() for _ in range(3)]
        assert kinds == [("decode", 4)] * 3 and all(t > 0 for t in times)
        per_exit = bench.fn(pf.Point("exit_eval", "fit", 4))
        kinds.clear()
        per_exit()
        assert kinds == [("decode", 4)] * 2  # one step with the exits, one without
        assert estimated[-bench_mod.EXIT_POINTS:] == [(e, 4) for e in range(1, bench_mod.EXIT_POINTS + 1)]


def test_profile_command_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "build_grid", lambda shape, quick=False: POINTS)
    monkeypatch.setattr(profiler.Budget, "for_run", classmethod(lambda cls, quick, cuda: cls(2, 1, 1, 2, 0.0)))
    out = profiler.profile("cpu", "tiny", quick=True, out=tmp_path, progress=False)
    prof = pf.read_profile(out)
    assert [r["op"] for r in prof.rows] == [p.op for p in POINTS]
    assert all(r["reps"] == 2 and r["median_s"] > 0 for r in prof.rows)
    meta = prof.meta
    assert meta["device"]["requested"] == "cpu" and meta["dtype"] == "fp32" and meta["clock"] == "wall_perf_counter"
    assert meta["model"]["hidden_size"] == SHAPE.hidden_size and meta["versions"]["torch"] == torch.__version__
    from drex.costmodel.fit import fit_profile

    fit, _ = fit_profile(out)
    assert set(fit["errors"]) == set(pf.OPS)


def test_cpu_layer_ops_cycle_through_distinct_layers_and_time_steady_decode(monkeypatch):
    """On CPU the per-layer ops run on a ring of a step's bytes (weights from memory, as in a real forward);
    the ring is capped by bytes; decode calls run each ring layer on a cache layer of its own and take the
    decode mirror's append path (one build per cache layer), not a rebuild per call."""
    import drex.real.bench as bench_mod
    import drex.real.kvmirror as km

    with torch.inference_mode():
        bench = Bench(SHAPE, "fp32", "cpu", POINTS)
        per, head = bench_mod._layer_bytes(SHAPE, torch.float32), bench_mod._head_bytes(SHAPE, torch.float32)
        want = -(-(SHAPE.num_layers * per + head) // per)  # a step's layers and LM head, in layers
        assert bench.layers_built == want == len({id(layer) for layer in bench.ring}) > SHAPE.num_layers
        assert all(layer.self_attn.layer_idx == 0 for layer in bench.ring)
        seen, real_call = [], type(bench.ring[0]).__call__
        monkeypatch.setattr(type(bench.ring[0]), "__call__",
                            lambda self, *a: seen.append(id(self)) or real_call(self, *a))
        builds, real_build = [], km.DecodeMirror.build
        monkeypatch.setattr(km.DecodeMirror, "build", lambda self, *a: builds.append(1) or real_build(self, *a))
        fn = bench.fn(pf.Point("layer_decode", "fit", 4, 128))
        assert len(builds) == want  # built at set-up
        for _ in range(2 * want):
            fn()
        # each ring layer attends its own cache layer (its K/V from memory, as in a real step): one mirror build
        # per cache layer, then appends
        assert len(set(seen)) == want and seen[0] != seen[1] and len(builds) == want
        heads = {id(h) for h in bench.heads}
        head_fn, used = bench.fn(pf.Point("head", "fit", 4)), set()
        for _ in range(2 * len(heads)):
            head_fn()
            used.add(id(bench.model.lm_head))
        assert used == heads and len(heads) == -(-(SHAPE.num_layers * per + head) // head) > 1
        monkeypatch.setattr(bench_mod, "RING_BYTES", 1)
        assert Bench(SHAPE, "fp32", "cpu", POINTS).layers_built == 1
