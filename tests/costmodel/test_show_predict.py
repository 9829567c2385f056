"""What ``drex costmodel show`` and ``predict`` print: columns that say what they hold, counts as whole numbers."""

import json

import pytest

from drex import REPO_ROOT
from drex.cli import main
from drex.costmodel import profile as pf
from drex.costmodel.show import show


def _table(text: str) -> dict[str, list[list[str]]]:
    """The point rows of ``show``'s table, by operation: each row's cells."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] in pf.ALL_OPS:
            rows.setdefault(cells[0], []).append(cells)
    return rows


def test_show_gives_a_coordinate_only_where_the_operation_has_it():
    text = show(REPO_ROOT / "profiles" / "cpu" / "tiny")
    rows = _table(text)
    header = next(line.split() for line in text.splitlines() if line.startswith("operation"))
    col = {name: header.index(name) for name in ("context", "chunk", "layers")}
    assert {"kv_copy", "layer_decode", "layer_prefill", "mlp"} <= set(rows)
    for op, cells in rows.items():
        layers = {c[col["layers"]] for c in cells}
        chunks = {c[col["chunk"]] for c in cells}
        contexts = {c[col["context"]] for c in cells}
        assert (layers == {"-"}) == (op != "kv_copy"), (op, layers)  # a KV copy's layers, a number >= 1
        assert (chunks == {"-"}) == (not op.endswith("_prefill")), (op, chunks)
        assert (contexts == {"-"}) == (not op.endswith(("_decode", "_prefill"))), (op, contexts)
    assert all(int(c[col["layers"]]) >= 1 for c in rows["kv_copy"])
    # ... and says what each column means.
    assert "layers: the layers a KV copy fills" in text and "-: not a coordinate" in text


def test_predict_echoes_its_counts_as_whole_numbers(capsys):
    path = str(REPO_ROOT / "profiles" / "a100" / "llama2-7b")
    assert main(["costmodel", "predict", path, "--num-tokens", "256", "--decode-context", "262144",
                 "--prefill-attn", "96"]) == 0
    out = capsys.readouterr().out
    assert '"decode_context": 262144,' in out and '"prefill_attn": 96,' in out and ".0," not in out
    assert main(["costmodel", "predict", path, "--num-tokens", "4", "--prefill-attn", "1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["prefill_attn"] == 1.5  # half a chunk's own pairs: not a whole number
    with pytest.raises(SystemExit) as e:  # a count of tokens: argparse says so in one line
        main(["costmodel", "predict", path, "--num-tokens", "4", "--decode-context", "2.5e5"])
    assert e.value.code == 2 and "--decode-context: invalid int value" in capsys.readouterr().err
