"""The sweep grid: flags given several times or as comma lists, YAML axes, invalid combinations, keys."""

from __future__ import annotations

import argparse

import pytest

import drex
from drex.explore import grid


def axes_of(*argv: str, grid_file=None) -> dict:
    p = argparse.ArgumentParser()
    grid.add_axis_flags(p)
    return grid.grid_axes(p.parse_args(list(argv)), grid_file)


def test_comma_lists_and_repeats_make_the_product_in_flag_order():
    axes = axes_of("--threshold", "0.3,0.5", "--policy", "off", "--policy", "drex,off", "--model", "tiny")
    assert axes == {"model": ["tiny"], "policy": ["off", "drex"], "threshold": ["0.3", "0.5"]}
    configs = grid.configurations(axes)
    assert len(configs) == 4
    assert configs[0] == {"model": "tiny", "policy": "off", "threshold": "0.3"}
    assert configs[1] == {"model": "tiny", "policy": "off", "threshold": "0.5"}  # last axis fastest


def test_values_with_commas_vary_only_by_repeating():
    axes = axes_of("--exits", "1,2", "--exits", "3", "--confidence", "beta:2,2",
                   "--trace", "synthetic:poisson:rate=4,n=10,prompt=fixed:8,output=fixed:4")
    assert axes["exits"] == ["1,2", "3"]
    assert axes["confidence"] == ["beta:2,2"]
    assert axes["trace"] == ["synthetic:poisson:rate=4,n=10,prompt=fixed:8,output=fixed:4"]
    assert axes_of("--trace", "azure-conv,azure-code")["trace"] == ["azure-conv", "azure-code"]


def test_yaml_grid_gives_any_axis_and_the_command_line_wins(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("exits: [[1, 2], [3]]\n--threshold: [0.3, 0.9]\nno-inline-drain: [true, false]\npolicy: lazy\n")
    axes = axes_of("--policy", "off,drex", grid_file=str(f))
    assert axes == {"policy": ["off", "drex"], "exits": ["1,2", "3"], "threshold": ["0.3", "0.9"],
                    "no_inline_drain": [True, False]}
    assert grid.to_argv({"exits": "1,2", "no_inline_drain": True, "max_batch_size": False}) == \
        ["--exits", "1,2", "--no-inline-drain"]
    assert grid.to_namespace({"no_inline_drain": True}).no_inline_drain is True


@pytest.mark.parametrize("text, message", [("bogus: [1]\n", "unknown axis 'bogus'"),
                                           ("- 1\n- 2\n", "mapping"), ("a: [\n", "not valid YAML"),
                                           ("threshold: []\n", "no values")])
def test_bad_grid_files_say_what_is_wrong(tmp_path, text, message):
    f = tmp_path / "g.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        grid.load_grid_file(f)


def test_invalid_values_and_combinations_are_refused_before_running():
    with pytest.raises(ValueError, match="invalid float value"):
        grid.to_namespace({"threshold": "high"})
    with pytest.raises(ValueError, match="below the model's 4 layers"):
        grid.check(grid.to_namespace({"model": "tiny", "exits": "5"}))
    with pytest.raises(ValueError, match="unknown policy"):
        grid.check(grid.to_namespace({"policy": "greedy"}))
    with pytest.raises(ValueError, match="must be > 0"):
        grid.check(grid.to_namespace({"slo_ttft_ms": "0"}))
    grid.check(grid.to_namespace({"model": "tiny", "exits": "2"}))


def test_key_hashes_the_parsed_configuration_and_drex_version(monkeypatch):
    key = grid.config_key(grid.to_namespace({"threshold": "0.5"}), {"mode": "simulate"})
    assert grid.config_key(grid.to_namespace({"threshold": ".50"}), {"mode": "simulate"}) == key
    assert grid.config_key(grid.to_namespace({"threshold": "0.6"}), {"mode": "simulate"}) != key
    assert grid.config_key(grid.to_namespace({"threshold": "0.5"}), {"mode": "capacity"}) != key
    monkeypatch.setattr(drex, "__version__", "9.9.9")
    assert grid.config_key(grid.to_namespace({"threshold": "0.5"}), {"mode": "simulate"}) != key
