"""drex sweep ends promptly: an address where no Ray head answers fails in seconds with drex's own error, and
SIGTERM or Ctrl-C stop a sweep at once, keeping what finished. Promptness is a subprocess timeout, not a clock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pandas as pd
import pytest

from drex.explore import ray_pool

pytestmark = pytest.mark.slow  # subprocess sweeps and socket probes: seconds: the `not slow` subset stays under 20 s

SYNTH = "synthetic:gamma:rate=300,n=80,burstiness=0.5,prompt=uniform:4:64,output=uniform:2:40"
BASE = ["--trace", SYNTH, "--model", "tiny", "--device", "cpu", "--cost-model", "roofline"]


@contextmanager
def drex_sweep(*argv: str, **kw):
    """``drex sweep`` in a subprocess, killed if the test leaves it running."""
    proc = subprocess.Popen([sys.executable, "-m", "drex", "sweep", *BASE, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_answers_fails_in_seconds_with_one_line(tmp_path):
    port = closed_port()
    with drex_sweep("--ray", f"127.0.0.1:{port}", "--out", str(tmp_path), "--no-progress") as proc:
        out, err = proc.communicate(timeout=60)  # Ray's own connection attempts would go on for minutes
    assert proc.returncode == 2, err
    assert err.splitlines() == [f"drex sweep: error: --ray 127.0.0.1:{port}: no Ray head answers at 127.0.0.1:{port} "
                                f"(Connection refused); start one there (ray start --head --port {port}) or use "
                                f"--ray auto"]


def test_a_port_that_answers_but_not_as_a_ray_head_is_refused():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def http1():  # a web server (Ray's dashboard, 8265, is a likely mix-up)
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=http1, daemon=True)
        t.start()
        with pytest.raises(ValueError, match=f"127.0.0.1:{port} answers, but not as a Ray head"):
            ray_pool.check_head(f"127.0.0.1:{port}", timeout=5)
        t.join()
        with pytest.raises(ValueError, match="answers, but not as a Ray head"):  # accepted, never answers
            ray_pool.check_head(f"127.0.0.1:{port}", timeout=0.2)


@pytest.mark.parametrize("address", ["6379", "head:port", "ray://head", "head:70000"])
def test_a_malformed_address_says_what_it_takes(address):
    with pytest.raises(ValueError, match="takes auto, off or a Ray head's HOST:PORT"):
        ray_pool.check_head(address)


def wait_for_a_finished_run(proc: subprocess.Popen, out_dir) -> None:
    for _ in range(600):
        if list(out_dir.glob("runs/*/summary.json")):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("no run finished")


@pytest.mark.slow  # a sweep in a subprocess, signalled
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_sweep_at_once_and_keeps_what_finished(tmp_path, sig):
    thresholds = ",".join(f"0.{i}" for i in range(1, 10))
    with drex_sweep("--policy", "drex", "--threshold", thresholds, "--num-requests", "300", "--ray", "off",
                    "--no-progress", "--out", str(tmp_path)) as proc:
        wait_for_a_finished_run(proc, tmp_path)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "runs finished, kept in" in err and err.rstrip().endswith("drex sweep: interrupted")
    assert "Traceback" not in err
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert len(df) == 9 and (df.status == "ok").sum() >= 1 and (df.status == "not run").sum() >= 1
    assert set(df.status) == {"ok", "not run"}
