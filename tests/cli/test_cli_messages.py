"""Issue 9 items 7, 9, 10, 11: messages a new user understands, models given as files, MoE refused."""

from __future__ import annotations

import json

import pytest

from drex import REPO_ROOT
from drex.cli import main
from drex.models import get_model

SIM = ["--model", "tiny", "--cost-model", "roofline", "--no-progress"]
SYNTH = "synthetic:poisson:rate=50,n=20,prompt=uniform:20:32,output=uniform:2:8"


def error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_folder_as_trace(tmp_path, capsys):
    assert main(["simulate", *SIM, "--trace", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a directory" in error(capsys)


def test_costmodel_on_a_missing_folder(tmp_path, capsys):
    for sub in (["fit"], ["show"], ["predict", "--num-tokens", "4"]):
        assert main(["costmodel", *sub, str(tmp_path / "missing")]) == 2
        err = error(capsys)
        assert "no such directory" in err and "meta.json" not in err


def test_validate_on_a_simulate_directory(tmp_path, capsys):
    assert main(["simulate", *SIM, "--trace", SYNTH, "--out", str(tmp_path / "sim")]) == 0
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "sim")]) == 2
    assert "drex simulate" in (err := error(capsys)) and "drex run" in err


@pytest.mark.parametrize("flags, says", [
    (["--num-requests", "0"], "--num-requests"), (["--rate-scale", "0"], "--rate-scale"),
    (["--exits", "0"], "got 0"), (["--exits", "9"], "--exits"), (["--max-batch-size", "0"], "--max-batch-size"),
    (["--replicas", "0"], "--replicas")])
def test_messages_name_flags_not_fields(tmp_path, capsys, flags, says):
    assert main(["simulate", *SIM, "--trace", SYNTH, *flags, "--out", str(tmp_path / "o")]) == 2
    err = error(capsys)
    assert says in err and "num_requests" not in err and "rate_scale" not in err and "(0,)" not in err


def test_more_requests_than_the_trace_holds_warns(tmp_path, capsys):
    assert main(["simulate", *SIM, "--trace", SYNTH, "--num-requests", "50", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "--num-requests 50" in err and "only 20" in err


def test_model_file_names_and_weights(tmp_path):
    cfg = json.loads((REPO_ROOT / "models" / "tiny-ee" / "config.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    shape = get_model(str(tmp_path / "cfg.json"))
    assert shape.name == "cfg" and shape.path is None  # a config file alone: random weights under --weights auto
    shipped = get_model(str(REPO_ROOT / "models" / "tiny-ee") + "/")
    assert shipped.name == "tiny-ee" and shipped.path == str(REPO_ROOT / "models" / "tiny-ee")
    assert get_model("tiny-ee").path == shipped.path


def test_run_with_a_model_file_uses_random_weights(tmp_path):
    from drex.real.run import RunConfig, resolve_weights
    from drex.settings import RunSettings

    (tmp_path / "cfg.json").write_text((REPO_ROOT / "models" / "tiny-ee" / "config.json").read_text())
    assert resolve_weights(RunConfig(RunSettings(model=str(tmp_path / "cfg.json")))) == "random"
    assert resolve_weights(RunConfig(RunSettings(model="tiny-ee"))) == str(REPO_ROOT / "models" / "tiny-ee")
    (tmp_path / "ckpt").mkdir()  # a Hugging Face config.json alone, without weights: random too
    (tmp_path / "ckpt" / "config.json").write_text((tmp_path / "cfg.json").read_text())
    assert resolve_weights(RunConfig(RunSettings(model=str(tmp_path / "ckpt" / "config.json")))) == "random"


def test_mixture_of_experts_is_refused(tmp_path, capsys):
    mixtral = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
               "num_experts_per_tok": 2}
    (tmp_path / "config.json").write_text(json.dumps(mixtral))
    assert main(["simulate", "--model", str(tmp_path), "--trace", SYNTH, "--out", str(tmp_path / "o")]) == 2
    err = error(capsys)
    assert "mixture-of-experts" in err and "num_local_experts=8" in err and "2 active" in err


def test_quality_skip_sweep_needs_policies(tmp_path, capsys):
    assert main(["quality", "--out", str(tmp_path / "q"), "--skip-sweep"]) == 2
    assert "--policies" in error(capsys)
    assert not (tmp_path / "q").exists()
