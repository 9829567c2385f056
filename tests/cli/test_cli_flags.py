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


@pytest.mark.parametrize("flags, says", [
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--max-model-len", "0"], "(--max-model-len) must be positive, got 0"),
    (["--num-kv-blocks", "0"], "--num-kv-blocks must be >= 1, got 0")])
def test_bad_values_name_their_flag(tmp_path, capsys, flags, says):
    assert main(["simulate", *SIM, "--trace", SYNTH, *flags, "--out", str(tmp_path / "o")]) == 2
    assert says in one_line(capsys)


def test_a_sweep_names_the_flag_of_a_bad_seed(tmp_path, capsys):
    assert main(["sweep", *SIM, "--trace", SYNTH, "--seed=-1,0", "--ray", "off", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "skipped invalid configuration" in err and "--seed must be a non-negative integer, got -1" in err


def test_max_model_len_is_described():
    from drex.cli import build_parser

    sim = build_parser(["simulate"])._subparsers._group_actions[0].choices["simulate"]
    text = " ".join(sim.format_help().split())
    assert "--max-model-len MAX_MODEL_LEN most tokens (prompt + output) one request may hold" in text


@pytest.mark.parametrize("argv, says", [
    (["simulate", "--num-reqeusts", "10"], "drex simulate: error: unrecognized flag --num-reqeusts; did you mean "
                                           "--num-requests?"),
    (["simulate", "--num-reqeusts=10"], "did you mean --num-requests?"),
    (["costmodel", "fit", "DIR", "--overwirte"], "drex costmodel fit: error: unrecognized flag --overwirte; did you "
                                                 "mean --overwrite?"),
    (["simulate", "--zzzz"], "drex simulate: error: unrecognized flag --zzzz; drex simulate --help lists its flags"),
    (["plot", "DIR", "extra"], "drex plot: error: unrecognized argument extra")])
def test_a_misspelled_flag_gets_the_closest_one(tmp_path, capsys, argv, says):
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = one_line(capsys)
    assert says in err and "{simulate,compare}" not in err and "usage" not in err


def test_one_request_is_singular(tmp_path, capsys):
    one = "synthetic:poisson:rate=50,n=1,prompt=uniform:20:32,output=uniform:2:8"
    assert main(["simulate", *SIM, "--trace", one, "--num-requests", "3", "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    assert "; 1 request in " in out and "holds only 1 request: running all 1" in err
    assert "1 requests" not in out + err
