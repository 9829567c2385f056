"""drex sweep on Ray: a local instance and a two-node cluster on loopback give --ray off's results.

Every test shuts down the Ray processes it started (the sweep's own instance, or the cluster).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from drex.cli import main
from drex.explore import ray_pool

SYNTH = "synthetic:gamma:rate=300,n=80,burstiness=0.5,prompt=uniform:4:64,output=uniform:2:40"
BASE = ["--trace", SYNTH, "--model", "tiny", "--device", "cpu", "--cost-model", "roofline", "--no-progress",
        "--policy", "off,drex", "--threshold", "0.3,0.8", "--exits", "1,2", "--exits", "2"]


def test_nodes_off_loopback_are_refused():
    ray_pool.check_loopback([{"Alive": True, "NodeManagerAddress": "127.0.0.1"},
                             {"Alive": False, "NodeManagerAddress": "10.0.0.5"}])
    with pytest.raises(ValueError, match="10.0.0.5: drex sweep runs Ray on loopback"):
        ray_pool.check_loopback([{"Alive": True, "NodeManagerAddress": "10.0.0.5"}])
    with pytest.raises(ValueError, match="loopback"):
        ray_pool._start(type("FakeRay", (), {"is_initialized": staticmethod(lambda: False)}), "10.0.0.5:6379")


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
def test_ray_auto_equals_ray_off(off_sweep, tmp_path):
    ray_pool.loopback_env()
    import ray

    assert main(["sweep", *BASE, "--ray", "auto", "--out", str(tmp_path)]) == 0
    assert not ray.is_initialized()  # the sweep shut its instance down
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
        assert main(["sweep", *BASE, "--ray", cluster.address, "--out", str(tmp_path)]) == 0
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
