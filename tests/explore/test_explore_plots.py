"""drex plot chooses figures by what a directory holds; drex compare --plot; bad paths fail in one line."""

from __future__ import annotations

import pytest

from drex.cli import main
from drex.plots import kind_of

SYNTH = "synthetic:gamma:rate=300,n=60,burstiness=0.5,prompt=uniform:4:64,output=uniform:2:40"
BASE = ["--trace", SYNTH, "--model", "tiny", "--device", "cpu", "--cost-model", "roofline", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"


def pngs(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes()[:8] for p in d.glob("*.png")}


@pytest.mark.slow
def test_each_kind_of_directory_gets_its_figures(tmp_path, capsys):
    run, cmp, sw, cap = (tmp_path / n for n in ("run", "cmp", "sweep", "cap"))
    assert main(["simulate", *BASE, "--policy", "drex", "--exits", "1,2", "--threshold", "0.5",
                 "--out", str(run)]) == 0
    assert main(["compare", *BASE, "--policies", "off,drex", "--slo-ttft-ms", "5", "--out", str(cmp), "--plot"]) == 0
    assert main(["sweep", *BASE, "--policy", "off,drex", "--threshold", "0.3,0.7", "--slo-ttft-ms", "5",
                 "--ray", "off", "--out", str(sw)]) == 0
    assert main(["capacity", *BASE, "--policy", "off", "--slo-ttft-ms", "5", "--out", str(cap)]) == 0
    assert [kind_of(d) for d in (run, cmp, sw, cap)] == ["run", "compare", "sweep", "capacity"]
    assert pngs(cmp) == {"compare.png": PNG}  # drew them itself
    for d in (run, sw, cap):
        assert main(["plot", str(d), "--out", str(tmp_path / "fig" / d.name)]) == 0
    assert pngs(tmp_path / "fig" / "run") == {n: PNG for n in ("latency_cdf.png", "timeline.png", "exit_layers.png")}
    assert pngs(tmp_path / "fig" / "sweep") == {"sweep.png": PNG}
    assert pngs(tmp_path / "fig" / "cap") == {"capacity.png": PNG}
    assert main(["plot", str(cap)]) == 0 and (cap / "capacity.png").is_file()  # default: beside the data


def test_plot_refuses_what_it_cannot_read(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no summary.json" in capsys.readouterr().err
    assert main(["compare", *BASE, "--policies", "off", "--plot"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
