"""Issue 26 (a new user's second hour), items 2 and 3: a --tp that cannot split the model is refused (also in
a sweep's invalid listing); flags named in their messages, --max-model-len 0 refused, a misspelled flag
answered with the closest one, "1 request" in the singular."""

from __future__ import annotations

import pytest

from drex.cli import main
from drex.costmodel.tensor_parallel import check_tp
from drex.devices import get_device
from drex.models import get_model

SIM = ["--model", "tiny", "--cost-model", "roofline", "--no-progress"]
SYNTH = "synthetic:poisson:rate=50,n=5,prompt=uniform:20:32,output=uniform:2:8"
BIG = ["--model", "llama2-13b", "--device", "h100", "--num-requests", "10", "--no-progress"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("tp, says", [("3", ["40 attention heads", "40 KV heads"]), ("5", ["MLP width 13,824"])])
def test_a_tp_that_does_not_split_the_model_is_refused(tmp_path, capsys, tp, says):
    assert main(["simulate", *BIG, "--tp", tp, "--out", str(tmp_path / "o")]) == 2
    err = one_line(capsys)
    assert f"--tp {tp} does not divide model llama2-13b's" in err and all(s in err for s in says)
    assert not (tmp_path / "o").exists()


def test_a_tp_that_splits_the_model_is_accepted():
    h100 = get_device("h100")
    check_tp(h100, 8, get_model("llama2-13b"))
    check_tp(h100, 16, get_model("llama2-70b"))  # 8 KV heads, each on two GPUs of 16
    with pytest.raises(ValueError, match="8 KV heads"):
        check_tp(h100, 12, get_model("llama2-70b"))  # 64 heads, but 12 GPUs cannot share 8 KV heads


def test_a_sweep_lists_an_uneven_tp_as_invalid(tmp_path, capsys):
    assert main(["sweep", *BIG, "--tp", "3,5", "--ray", "off", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no valid configuration in the grid (2 invalid)" in err
    assert "--tp 3 does not divide" in err and "--tp 5 does not divide" in err
