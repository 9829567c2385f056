"""Re-run the README's commands and check every figure it quotes from them, within a stated tolerance.

    python benchmarks/readme_figures.py            # about a minute on one core; exit 1 when a figure drifted
    python benchmarks/readme_figures.py --list     # the figures and their tolerances, nothing run

Each figure below names the README command it comes from (exactly as the README shows it, continuation
lines joined, ``--out`` replaced by a scratch directory) and a pattern that finds the quoted numbers in the
README's text; the numbers are read from the README itself, so the README stays the one place a figure
is written. Figures of the benchmarks that take minutes to hours (the policy grid, SmolLM2's quality
sweep) are checked against their committed results, which the README names. The check fails when a command or a quote is no longer in the README (the figure moved and
this list was not told), or when a re-run gives a value outside the tolerance:

- simulator figures are deterministic (same seed, same files): a tolerance only covers the quote's rounding
  (half a unit of its last digit) plus 0.2% for harmless numeric changes;
- wall times ("about 15 s") are within a factor of 2 either way (a shared 2-core machine drifts 10-20%
  minutes apart; "about" means the order of magnitude a user should expect);
- the real backend runs in real time, so its batches, and with them drex's decisions, move from run to
  run and with the machine's load: its early-exit fraction is quoted as a range ("1 to 8%", measured
  1.0% to 6.1% here, the high end with both cores busy), and the check holds a re-run to that range.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]

QUICK = "drex compare"
SIM_8B = ("drex compare --trace azure-conv --num-requests 2000 --rate-scale 4 --model llama3-8b --device a100 "
          "--exits 16 --threshold 0.5 --policies off,eager,drex")
SIM_8B_08 = ("drex compare --trace azure-conv --num-requests 2000 --rate-scale 4 --model llama3-8b --device a100 "
             "--exits 16 --threshold 0.8 --policies off,drex")
SIM_8B_LIGHT = ("drex compare --trace azure-conv --num-requests 2000 --model llama3-8b --device a100 "
                "--exits 16 --threshold 0.5 --policies off,drex")
REAL_TINY = ("drex run --model tiny-ee --trace azure-conv --num-requests 32 --rate-scale 4 --policy drex "
             "--threshold 0.3 --out runs/tiny")

MC = ("drex simulate --trace mooncake --num-requests 300 --rate-scale 4 --model qwen-14b --device a100 --policy off "
      "--seed 7")
MC_FIRST, MC_RESERVE, MC_ORACLE = (MC + " --admission first-chunk --out runs/mc-first-chunk",
                                   MC + " --out runs/mc-reserve", MC + " --admission oracle --out runs/mc-oracle")

Results = dict  # policy -> summary.json (a single run under ""), plus "_wall_s"


def tput(p: str) -> Callable[[Results], float]:
    return lambda r: r[p]["output_throughput"]


def exits(p: str) -> Callable[[Results], float]:
    return lambda r: r[p]["early_exit_fraction"]


def tpot(p: str) -> Callable[[Results], float]:
    return lambda r: r[p]["mean_tpot_ms"]


def gain(p: str, base: str = "off") -> Callable[[Results], float]:
    return lambda r: r[p]["output_throughput"] / r[base]["output_throughput"] - 1


def wall(r: Results) -> float:
    return r["_wall_s"]


@dataclass(frozen=True)
class Figure:
    """Numbers the README quotes (``quote``'s named groups) and how a re-run of ``command`` measures each."""

    command: str
    quote: str  # a regex over the README's text, whitespace collapsed; one named group per number
    measure: dict[str, Callable[[Results], float]]
    kind: dict[str, str] = field(default_factory=dict)  # group -> "percent" (quoted x100) | "wall" | "at least"/"at most"
    source: str = ""  # a committed results file the figure is read from (the command is not re-run)


FIGURES = [
    Figure(QUICK, r"in about (?P<wall>\d+) s\.", {"wall": wall}, {"wall": "wall"}),
    Figure(QUICK, r"Here they barely do: (?P<conf>\d+)% of tokens are confident",
           {"conf": exits("latency-only")}, {"conf": "percent"}),
    Figure(QUICK, r"\((?P<exits>\d+)% of tokens exit early\), and comes out (?P<gain>[\d.]+)% above `off` "
                  r"\((?P<drex>[\d.]+) against (?P<off>[\d.]+) tok/s\)",
           {"exits": exits("drex"), "gain": gain("drex"), "drex": tput("drex"), "off": tput("off")},
           {"exits": "percent", "gain": "percent"}),
    Figure(QUICK, r"`bound` \(\+(?P<bound>\d+)%\)", {"bound": gain("bound")}, {"bound": "percent"}),
    Figure(SIM_8B, r"side by side \(about (?P<wall>\d+) s\)", {"wall": wall}, {"wall": "wall"}),
    Figure(SIM_8B, r"lets (?P<pct>\d+)% of the tokens \(`early_exit_fraction` (?P<frac>[\d.]+)\)",
           {"pct": exits("drex"), "frac": exits("drex")}, {"pct": "percent"}),
    Figure(SIM_8B, r"for (?P<gain>[\d.]+)% more output throughput than `off` \((?P<drex>[\d.]+) against "
                   r"(?P<off>[\d.]+) tok/s\) and a lower mean TPOT \((?P<tdrex>[\d.]+) against (?P<toff>[\d.]+) ms\)",
           {"gain": gain("drex"), "drex": tput("drex"), "off": tput("off"), "tdrex": tpot("drex"),
            "toff": tpot("off")}, {"gain": "percent"}),
    Figure(SIM_8B, r"`eager` exits almost every token \((?P<eager>[\d.]+)\)", {"eager": exits("eager")}),
    Figure(SIM_8B_08, r"# (?P<pct>\d+)% early exits \((?P<frac>[\d.]+)\), (?P<drex>[\d.]+) against (?P<off>[\d.]+) "
                      r"tok/s", {"pct": exits("drex"), "frac": exits("drex"), "drex": tput("drex"), "off": tput("off")},
           {"pct": "percent"}),
    Figure(SIM_8B_LIGHT, r"# light load: (?P<frac>[\d.]+), TPOT (?P<tdrex>[\d.]+) against (?P<toff>[\d.]+) ms",
           {"frac": exits("drex"), "tdrex": tpot("drex"), "toff": tpot("off")}),
    Figure(SIM_8B_LIGHT, r"the arrivals set the throughput \((?P<drex>[\d.]+) against (?P<off>[\d.]+) tok/s\)",
           {"drex": tput("drex"), "off": tput("off")}),
    Figure(MC_FIRST, r"mc-first-chunk # (?P<pre>[\d.]+) preemptions a request, (?P<tput>[\d.]+) tok/s",
           {"pre": lambda r: r[""]["mean_preemptions_per_request"], "tput": tput("")}),
    Figure(MC_RESERVE, r"mc-reserve # (?P<pre>[\d.]+) preemptions a request, (?P<tput>[\d.]+) tok/s",
           {"pre": lambda r: r[""]["mean_preemptions_per_request"], "tput": tput("")}),
    Figure(MC_ORACLE, r"mc-oracle # (?P<pre>\d+) preemptions, (?P<tput>[\d.]+) tok/s",
           {"pre": lambda r: r[""]["mean_preemptions_per_request"], "tput": tput("")}),
    Figure(REAL_TINY, r"--out runs/tiny # about (?P<wall>\d+) s on one CPU thread", {"wall": wall}, {"wall": "wall"}),
    Figure(REAL_TINY, r"the (?P<rejected>\d+) longer conversations are rejected",
           {"rejected": lambda r: r[""]["failed"]}),
    Figure(REAL_TINY, r"(?P<lo>[\d.]+) to (?P<hi>[\d.]+)% of the tokens leave at an exit on the model's own "
                      r"confidence", {"lo": exits(""), "hi": exits("")}, {"lo": "at least", "hi": "at most"}),
]


# Figures read from a benchmark's committed results (its command, shown in the README, takes minutes to
# hours): the README must quote what the committed file holds.
GRID = dict(command="benchmarks/policy_grid.py", source="benchmarks/results/policy_grid.csv")
QUALITY = dict(command="drex quality --model smollm2-ee --metrics learned --out runs/smol-quality",
               source="benchmarks/quality_smollm2_ee.csv")


def cell(name: str, column: str) -> Callable[[Results], float]:
    return lambda r: float(r["table"].set_index("name").loc[name, column])


def quality(threshold: float, column: str) -> Callable[[Results], float]:
    def value(r: Results) -> float:
        t = r["table"]
        return float(t[(t.metric == "learned") & (t.threshold == threshold)][column].iloc[0])
    return value


COMMITTED = [
    Figure(**GRID, quote=r"lowest: three exits at 15% confident, (?P<share>[\d.]+)%\)",
           measure={"share": cell("13b-h200-conv-15-3exits", "drex_share_of_bih_gain")}, kind={"share": "percent"}),
    Figure(**GRID, quote=r"drex gives (?P<drex>[\d.]+)× off against best-in-hindsight's (?P<bih>[\d.]+)×, at "
                 r"(?P<tpot>[\d.]+)× off's mean TPOT",
           measure={"drex": cell("tiny-cpu-conv-60", "drex/off"), "bih": cell("tiny-cpu-conv-60", "bih/off"),
            "tpot": cell("tiny-cpu-conv-60", "drex_mean_tpot_ratio")}),
    Figure(**GRID, quote=r"it gives (?P<g15>[\d.]+)×, (?P<g60>[\d.]+)× and (?P<g85>[\d.]+)× off's throughput at "
                 r"(?P<t15>[\d.]+)×, (?P<t60>[\d.]+)× and (?P<t85>[\d.]+)× its mean TPOT",
           measure={f"{k}{c}": cell(f"13b-h200-conv-{c}", col) for c in (15, 60, 85)
            for k, col in (("g", "drex/off"), ("t", "drex_mean_tpot_ratio"))}),
    Figure(**QUALITY, quote=r"default threshold 0\.97: ROUGE-L (?P<rouge>[\d.]+) against the full model, (?P<exits>\d+) % "
                    r"of tokens exit early",
           measure={"rouge": quality(0.97, "rouge_l"), "exits": quality(0.97, "early_exit_fraction")},
           kind={"exits": "percent"}),
]


def readme_text(text: str) -> str:
    return " ".join(text.split())


def readme_commands(text: str) -> set[str]:
    """Every command line of the README's bash blocks: continuations joined, comments dropped."""
    cmds = set()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for cmd in line.split(" #")[0].split(" && "):
                if cmd.strip():
                    cmds.add(" ".join(cmd.split()))
    return cmds


def tolerance(quoted: str, kind: str, value: float) -> tuple[float, float]:
    """The [low, high] a measured value may take for the quoted text (see the module docstring)."""
    if kind == "wall":
        return value / 2, value * 2
    scale = 100 if kind in ("percent", "at least", "at most") else 1
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    half_unit = 0.5 * 10 ** -decimals / scale
    if kind == "at least":
        return value / scale - half_unit, float("inf")
    if kind == "at most":
        return float("-inf"), value / scale + half_unit
    slack = 0.002 * abs(value / scale)
    return value / scale - half_unit - slack, value / scale + half_unit + slack


def committed(path: str) -> Results:
    import pandas as pd

    return {"table": pd.read_csv(REPO / path)}


def check(text: str, results: dict[str, Results], figures: list[Figure] | None = None) -> list[str]:
    """Failures (empty: every figure holds). ``results``: command -> its re-run's results."""
    flat, cmds, failures = readme_text(text), readme_commands(text), []
    for fig in FIGURES + COMMITTED if figures is None else figures:
        if fig.command not in cmds and not (fig.source and fig.command in flat):
            failures.append(f"command not in the README any more: {fig.command}")
            continue
        m = re.search(fig.quote, flat)
        if m is None:
            failures.append(f"quote not in the README any more: /{fig.quote}/ (from {fig.command})")
            continue
        for name, measure in fig.measure.items():
            quoted = m.group(name)
            low, high = tolerance(quoted, fig.kind.get(name, ""), float(quoted))
            got = measure(results[fig.source or fig.command])
            if not low <= got <= high:
                failures.append(f"{name} = {quoted} in the README, measured {got:.4g} (allowed {low:.4g} .. "
                                f"{high:.4g}): {fig.command}")
    return failures


def run(command: str, scratch: Path) -> Results:
    """Run a README command with its --out in ``scratch``; its summaries by policy, and its wall time."""
    args = shlex.split(command)
    if "--out" in args:
        i = args.index("--out")
        del args[i:i + 2]
    out = scratch / re.sub(r"\W+", "_", command)[:80]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "drex", *args[1:], "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    if (out / "summary.json").exists():
        res = {"": json.loads((out / "summary.json").read_text())}
    else:
        res = {p.name: json.loads((p / "summary.json").read_text()) for p in out.iterdir() if p.is_dir()}
    return res | {"_wall_s": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="list the figures and their commands; run nothing")
    args = ap.parse_args()
    text = (REPO / "README.md").read_text()
    commands = list(dict.fromkeys(f.command for f in FIGURES))
    if args.list:
        for fig in FIGURES + COMMITTED:
            print(f"{', '.join(fig.measure)} <- {fig.command}")
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for i, cmd in enumerate(commands, 1):
            print(f"[{i}/{len(commands)}] {cmd}", file=sys.stderr, flush=True)
            results[cmd] = run(cmd, Path(scratch))
    results |= {f.source: committed(f.source) for f in COMMITTED}
    failures = check(text, results)
    for f in failures:
        print("DRIFT " + f)
    n = sum(len(f.measure) for f in FIGURES + COMMITTED)
    print(f"{n - len(failures)} of {n} README figures within tolerance" if not failures
          else f"{len(failures)} README figure(s) drifted")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
