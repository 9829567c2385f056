"""Sweep tasks on Ray, over loopback only. The only module of drex that imports Ray.

``auto`` starts a private local instance (``address="local"``: never someone else's cluster)
bound to 127.0.0.1 with one CPU slot per core and a small object store, and shuts it down after;
an address joins an existing cluster, which must also be on 127.0.0.1. Either way every node's
address is checked before a task is sent. At most two tasks per CPU slot are in flight, so a
large grid never piles its records up in the object store.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator

import drex

LOOPBACK = "127.0.0.1"
OBJECT_STORE_BYTES = 256 * 2**20  # records of one run are a few MB; the default (30% of RAM) is wasteful
PROBE_S = 5.0  # a head that has not answered in this long is not going to
# The client preface of HTTP/2 and an empty SETTINGS frame: a gRPC server (a Ray head's GCS) answers SETTINGS.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HEAD_HINT = "the address `ray start --head` printed; port 6379 by default"


def loopback_env() -> None:
    """On Linux, Ray turns a node address of 127.0.0.1 into the machine's outward address (so other
    hosts could join). With this variable off it keeps the loopback address, and its processes
    listen on 127.0.0.1 only. Ray reads it when first imported, and its child processes inherit it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def check_loopback(nodes: list[dict]) -> None:
    bad = [n.get("NodeManagerAddress") for n in nodes if n.get("Alive") and n.get("NodeManagerAddress") != LOOPBACK]
    if bad:
        raise ValueError(f"Ray node(s) at {', '.join(map(str, bad))}: drex sweep runs Ray on loopback "
                         f"({LOOPBACK}) only")


def head_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``ray://HOST:PORT``, ``[IPv6]:PORT``) -> (host, port); ValueError otherwise."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray {address}: takes auto, off or a Ray head's HOST:PORT ({HEAD_HINT})")
    return host.strip("[]"), int(port)


def check_head(address: str, timeout: float = PROBE_S) -> None:
    """A gRPC server (a Ray head's GCS, or a Ray Client server) answers at ``address`` within ``timeout``."""
    host, port = head_address(address)
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise ValueError(f"--ray {address}: no Ray head answers at {host}:{port} ({why}); start one there "
                         f"(ray start --head --port {port}) or use --ray auto") from None
    with s:
        try:
            s.sendall(HTTP2_HELLO)
            frame = s.recv(9)
        except OSError:
            frame = b""
    if len(frame) < 4 or frame[3] != 4:  # an HTTP/2 frame's type byte; 4: SETTINGS
        raise ValueError(f"--ray {address}: {host}:{port} answers, but not as a Ray head; give {HEAD_HINT}")


def _start(ray, mode: str) -> bool:
    """Connect or start; True when this call started the instance (and so must shut it down)."""
    if ray.is_initialized():
        return False
    # Workers are child processes of the instance: they import this drex, not another install's.
    root = str(drex.REPO_ROOT)
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, path) if p)
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if mode == "auto":
        ray.init(address="local", num_cpus=os.cpu_count() or 1, _node_ip_address=LOOPBACK,
                 object_store_memory=OBJECT_STORE_BYTES, **common)
    else:
        if not mode.startswith(("ray://", LOOPBACK, "localhost")):
            raise ValueError(f"--ray {mode}: drex sweep joins clusters on loopback ({LOOPBACK}:PORT) only")
        ray.init(address=mode, **{k: v for k, v in common.items() if k != "include_dashboard"})
    return True


def run_on_ray(tasks: list[dict], mode: str) -> Iterator[dict]:
    """Yield each task's result as it finishes (any order). ``mode``: auto, or an address that passed ``check_head``."""
    loopback_env()
    import ray

    from drex.explore.tasks import run_task

    handler = signal.getsignal(signal.SIGTERM)
    started = _start(ray, mode)
    if started and handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)  # ray.init puts in its own (sys.exit): keep the sweep's
    try:
        check_loopback(ray.nodes())
        remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: dict = {}
        queue = list(tasks)
        while queue or pending:
            while queue and len(pending) < 2 * slots:
                t = queue.pop(0)
                pending[remote.remote(t)] = t
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died: the configuration is recorded as failed
                yield {"key": task["key"], "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    finally:
        if started:
            ray.shutdown()
