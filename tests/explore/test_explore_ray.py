"""drex sweep on Ray: a private instance and a user's cluster (two nodes, on loopback here) give --ray off's
results; a private instance leaves nothing behind, even when terminated.

Every test shuts down the Ray processes it started (the sweep's own instance, or the cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from drex.cli import main
from drex.explore import ray_pool

SYNTH = "synthetic:gamma:rate=300,n=80,burstiness=0.5,prompt=uniform:4:64,output=uniform:2:40"
# A short folder for Ray's session (its socket paths must fit 107 bytes): the system temp folder when its path
# is short, else the filesystem root's standard one.
SHORT_TMP = tempfile.gettempdir() if len(tempfile.gettempdir()) <= 16 else os.path.join(os.sep, "tmp")
BASE = ["--trace", SYNTH, "--model", "tiny", "--device", "cpu", "--cost-model", "roofline", "--no-progress",
        "--policy", "off,drex", "--threshold", "0.3,0.8", "--exits", "1,2", "--exits", "2"]


@pytest.mark.slow  # Ray's own connection attempt
def test_an_address_off_loopback_is_tried_not_refused(tmp_path, capsys):
    """A user's cluster may be anywhere: drex asks whether a Ray head answers there (this one does not exist)."""
    argv = ["sweep", *BASE, "--ray", "ray-head.invalid:6379", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--ray ray-head.invalid:6379: no Ray head answers at ray-head.invalid:6379" in err and "loopback" not in err


def same_results(a, b) -> None:
    """Equal sweep.csv except sim_wall_s, and byte-identical run records."""
    da, db = pd.read_csv(a / "sweep.csv"), pd.read_csv(b / "sweep.csv")
    assert len(da) == 8 and (da.status == "ok").all()
    pd.testing.assert_frame_equal(da.drop(columns="sim_wall_s"), db.drop(columns="sim_wall_s"))
    for key in da.config_id:
        for name in ("requests.csv", "steps.csv", "config.json"):
            assert (a / "runs" / key / name).read_bytes() == (b / "runs" / key / name).read_bytes(), (key, name)
        sa, sb = (json.loads((d / "runs" / key / "summary.json").read_text()) for d in (a, b))
        assert sa.pop("sim_wall_s") >= 0 and sb.pop("sim_wall_s") >= 0 and sa == sb


@pytest.fixture(scope="module")
def off_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("off")
    assert main(["sweep", *BASE, "--ray", "off", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_ray_auto_equals_ray_off(off_sweep, tmp_path, capfd):
    ray_pool.loopback_env()
    import ray

    capfd.readouterr()
    folders = set(Path(tempfile.gettempdir()).glob("drex-ray-*"))
    assert main(["sweep", *BASE, "--ray", "auto", "--out", str(tmp_path)]) == 0
    assert not ray.is_initialized()  # the sweep shut its instance down
    assert set(Path(tempfile.gettempdir()).glob("drex-ray-*")) == folders  # and removed its folder
    assert capfd.readouterr().err == ""  # nothing of Ray's (its token notice, its logs) on the user's terminal
    same_results(off_sweep, tmp_path)


@pytest.mark.slow
def test_two_node_loopback_cluster_equals_ray_off(off_sweep, tmp_path):
    ray_pool.loopback_env()  # before Ray reads it: nodes keep 127.0.0.1
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    try:
        cluster.add_node(**small)
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:")
        # as a user runs it: a process of its own, which must find a head on loopback by itself
        env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        proc = subprocess.run([sys.executable, "-m", "drex", "sweep", *BASE, "--ray", cluster.address, "--out",
                               str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        import ray

        ray.init(address=cluster.address)
        try:
            nodes = [n for n in ray.nodes() if n["Alive"]]
            assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    same_results(off_sweep, tmp_path)


@pytest.mark.slow
def test_a_terminated_private_instance_leaves_nothing_behind(tmp_path):
    """SIGTERM mid-sweep: it ends within the timeout, keeps what finished, and leaves no Ray process, no session
    folder in the system temp directory and no token in the home directory; Ray says nothing on stderr."""
    tmp = Path(tempfile.mkdtemp(prefix="dx", dir=SHORT_TMP))  # short: Ray's socket paths must fit 107 bytes
    try:
        env = {**os.environ, "TMPDIR": str(tmp), "HOME": str(tmp_path / "home")}
        env.pop("RAY_AUTH_TOKEN", None), env.pop("RAY_AUTH_MODE", None)
        thresholds = ",".join(f"0.{i}" for i in range(1, 10))
        argv = [sys.executable, "-m", "drex", "sweep", *BASE[:8], "--no-progress", "--policy", "drex", "--threshold",
                thresholds, "--num-requests", "300", "--ray", "auto", "--out", str(tmp_path / "s")]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            for _ in range(1200):
                if list((tmp_path / "s").glob("runs/*/summary.json")) or proc.poll() is not None:
                    break
                time.sleep(0.1)
            assert list(tmp.iterdir()), "the instance's folder is in the temp directory while it runs"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, err
        lines = [line for line in err.splitlines() if line]
        assert len(lines) == 2 and "runs finished, kept in" in lines[0] and lines[1] == "drex sweep: interrupted", err
        assert (pd.read_csv(tmp_path / "s" / "sweep.csv").status == "ok").any()
        assert list(tmp.iterdir()) == [] and not (tmp_path / "home").exists()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert str(tmp) not in ps, "a Ray process of the sweep's instance is still running"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
