"""Frozen, validated settings of early exit and of the scheduler (one run's settings: ``drex.settings``)."""

from __future__ import annotations

from dataclasses import dataclass

CONFIDENCE_METRICS = ("margin", "maxprob", "entropy", "learned")  # learned: a trained estimator's P(agree)
PROFITABILITY = ("costmodel", "art", "knobs")
ADMISSIONS = ("reserve", "vllm", "first-chunk", "oracle")  # core/admission.py: when a waiting request joins
LOWER_IS_BETTER = frozenset({"entropy"})  # confidence metrics where a smaller value means surer


@dataclass(frozen=True)
class EEConfig:
    """Where requests may exit and when they want to.

    ``exits`` are layer indices *after which* an exit head runs: exit e means
    layers [0, e) were computed. A request wants to exit at the first exit
    point whose confidence clears ``threshold``.
    """

    exits: tuple[int, ...] = ()
    threshold: float = 0.8
    metric: str = "margin"

    def __post_init__(self) -> None:
        if list(self.exits) != sorted(set(self.exits)):
            raise ValueError(f"exit layers (--exits) must be distinct and increasing, got {_layers(self.exits)}")
        if any(e <= 0 for e in self.exits):
            raise ValueError(f"exit layers (--exits) must be >= 1, got {_layers(self.exits)}")
        if self.metric not in CONFIDENCE_METRICS:
            raise ValueError(f"confidence metric must be one of {CONFIDENCE_METRICS}, got {self.metric!r}")
        if not self.lower_is_better and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] for {self.metric}, got {self.threshold}")

    def check_model(self, num_layers: int) -> None:
        bad = [e for e in self.exits if e >= num_layers]
        if bad:
            raise ValueError(f"exit layers (--exits) {_layers(bad)} must be below the model's {num_layers} layers")

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    def clears(self, confidence):
        """Whether a confidence (or an array of them) clears the threshold."""
        if self.lower_is_better:
            return confidence < self.threshold
        return confidence > self.threshold


@dataclass(frozen=True)
class SchedulerConfig:
    policy: str = "drex"
    max_batch_size: int = 256
    chunk_size: int = 512  # Sarathi token budget per step (prefill chunks + decodes)
    block_size: int = 16  # tokens per KV block
    max_model_len: int = 16384
    profitability: str = "costmodel"  # "costmodel" (drex's own decision), "art" (the authors'), "knobs"
    # "knobs": the tunable family best-in-hindsight searches: split when at least this fraction of the active
    # rows wants to exit, then let the others go on at once (split_continue) or park them.
    split_fraction: float = 0.5
    split_continue: bool = False
    # Parking's latency bound (no TPOT SLO): a row may spend at most (x - 1) decode steps parked per step it
    # decoded, so that parking inflates its time per output token by at most x. inf: unbounded.
    max_tpot_inflation: float = 1.25
    # No parking for this many steps after a preemption: under KV pressure a parked row holds its blocks
    # without producing, and the preemptions it feeds cost more than any split saves.
    park_calm_steps: int = 64
    # Rebatching buffer flush rules (the authors' set; the cost model may flush earlier).
    flush_min_rows: int = 0  # 0: max_batch_size
    flush_age_alpha: float = 0.1  # |buffer| * (1 + age_steps * alpha) >= max_batch_size
    flush_max_wait_steps: int = 16
    inline_drain: bool = True
    # drex (costmodel) skips an exit point's head in decode steps where no split can pay (core/headskip.py).
    skip_exit_heads: bool = True
    # Fraction of KV blocks admission keeps free (vLLM's watermark), besides the running rows' next blocks.
    kv_watermark: float = 0.01
    # When a waiting request joins the batch (core/admission.py): reserve (room kept for growth), vllm, first-chunk, oracle.
    admission: str = "reserve"
    # Decode steps the scheduler may plan ahead at once when nothing can change (simulator speed).
    max_lookahead_steps: int = 64

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "chunk_size", "block_size", "max_model_len", "flush_max_wait_steps",
                     "max_lookahead_steps"):
            if getattr(self, name) <= 0:
                flag = "--" + name.replace("_", "-")  # the flags that set them carry the same names
                raise ValueError(f"{name.replace('_', ' ')} ({flag}) must be positive, got {getattr(self, name)}")
        if self.profitability not in PROFITABILITY:
            raise ValueError(f"profitability must be one of {PROFITABILITY}, got {self.profitability!r}")
        if self.admission not in ADMISSIONS:
            raise ValueError(f"unknown admission rule {self.admission!r} (--admission): {', '.join(ADMISSIONS)}")
        if not 0.0 <= self.kv_watermark < 1.0:
            raise ValueError(f"kv_watermark must be in [0, 1), got {self.kv_watermark}")
        if not 0.0 <= self.split_fraction <= 1.0:
            raise ValueError(f"split_fraction must be in [0, 1], got {self.split_fraction}")
        if not self.max_tpot_inflation >= 1.0:
            raise ValueError(f"max_tpot_inflation must be >= 1, got {self.max_tpot_inflation}")
        if self.flush_min_rows < 0 or self.flush_age_alpha < 0:
            raise ValueError("flush_min_rows and flush_age_alpha must be >= 0")

    @property
    def flush_rows(self) -> int:
        return self.flush_min_rows or self.max_batch_size


def _layers(exits) -> str:
    """Layer numbers as a user typed them (10,20), not as a Python tuple."""
    return ",".join(str(e) for e in exits) or "none"
