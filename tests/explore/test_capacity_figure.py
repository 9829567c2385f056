"""capacity.png's log latency axes: tick labels never overlap, whatever range the latencies span."""

from __future__ import annotations

import pytest



def _cap(lowest_ms: float, highest_ms: float, n: int = 6) -> dict:
    """A capacity search whose p99 latencies grow geometrically from lowest_ms to highest_ms over n loads."""
    runs = []
    for i in range(n):
        ms = lowest_ms * (highest_ms / lowest_ms) ** (i / (n - 1))
        runs.append({"request_rate": 1.0 + i, "goodput_fraction": 1.0 - 0.05 * i, "meets_slo": i < n - 1,
                     "summary": {"p99_ttft_ms": ms, "p99_tpot_ms": ms / 10, "completed": 100, "failed": 0}})
    return {"runs": runs, "num_runs": n, "min_goodput_fraction": 0.9, "max_request_rate": float(n - 1),
            "slo_ttft_ms": 2000.0, "slo_tpot_ms": 100.0, "knee": runs[-2]["summary"]}


def _labels(fig, ax) -> list:
    """The y tick labels drawn on ax (major and minor, non-empty), with their extents on the rendered canvas."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
             if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]
    return sorted(((t.label1.get_text(), t.label1.get_window_extent(renderer)) for t in ticks),
                  key=lambda te: te[1].y0)


@pytest.mark.slow  # about 6 s a figure
@pytest.mark.parametrize("lowest_ms,highest_ms", [(50, 200_000), (300, 3000), (700, 1000), (5, 50_000_000)])
def test_log_axis_labels_do_not_overlap(lowest_ms, highest_ms):
    from drex.plots.capacity import capacity_figure  # matplotlib and seaborn: imported only when it runs
    from drex.plots.style import plt

    fig = capacity_figure(_cap(lowest_ms, highest_ms))
    try:
        for ax in fig.axes[1:3]:  # p99 TTFT and p99 TPOT, both log
            assert ax.get_yscale() == "log"
            labels = _labels(fig, ax)
            assert len(labels) >= 2, labels  # the axis still reads
            for (a, box_a), (b, box_b) in zip(labels, labels[1:]):
                assert box_a.y1 <= box_b.y0, f"{ax.get_ylabel()}: {a!r} overlaps {b!r}"
    finally:
        plt.close(fig)
