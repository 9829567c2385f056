"""BERTScore on a small BERT written here (the MiniLM package is used by drex quality, not by tests)."""

import pytest

transformers = pytest.importorskip("transformers")

from drex.lab.bertscore import BertScorer  # noqa: E402

pytestmark = pytest.mark.slow  # importing transformers' BERT takes seconds


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    words = "the cat sat on a mat dog ran in park def return x y".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(str(d / "vocab.txt")).save_pretrained(str(d))
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)
    transformers.BertModel(cfg).save_pretrained(str(d))
    return BertScorer(d)


def test_identical_is_one_and_order_of_similarity(scorer):
    same, close, far = scorer.score(["the cat sat on a mat"] * 3,
                                    ["the cat sat on a mat", "the cat sat on the mat", "dog ran in park"])
    assert same == 1.0
    assert far < close < 1.0


def test_empty_text_scores_zero(scorer):
    assert scorer.score([""], ["the cat"]) == [0.0]
