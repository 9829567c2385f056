"""Sweep tasks on Ray. The only module of drex that imports Ray.

``auto`` starts a private local instance (``address="local"``: never someone else's cluster)
bound to 127.0.0.1, with one CPU slot per core, a small object store, a temporary directory of its
own and Ray's token authentication (the user's token, else one of its own); it is shut down and its
directory removed after. An address joins the user's cluster wherever its nodes are, once a Ray head answers
there (``ray.init`` would otherwise retry for minutes). Ray's console output while it starts or
joins (connection retries, notices) is kept off the terminal and read only to explain a failure.
At most two tasks per CPU slot are in flight, so a large grid never piles its records up in the
object store.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import drex

LOOPBACK = "127.0.0.1"
OBJECT_STORE_BYTES = 256 * 2**20  # records of one run are a few MB; the default (30% of RAM) is wasteful
PROBE_S = 5.0  # a head that has not answered in this long is not going to
# The client preface of HTTP/2 and an empty SETTINGS frame: a gRPC server (a Ray head's GCS) answers SETTINGS.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HEAD_HINT = "the address `ray start --head` printed; port 6379 by default"
TOKEN_HINT = ("the cluster uses Ray's token authentication: set RAY_AUTH_MODE=token and give its token "
              "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")


def loopback_env() -> None:
    """On Linux, Ray turns a node address of 127.0.0.1 into the machine's outward address (so other
    hosts could join). With this variable off it keeps the loopback address, and its processes
    listen on 127.0.0.1 only. Ray reads it when first imported, and its child processes inherit it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def head_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``ray://HOST:PORT``, ``[IPv6]:PORT``) -> (host, port); ValueError otherwise."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray {address}: takes auto, off or a Ray head's HOST:PORT ({HEAD_HINT})")
    return host.strip("[]"), int(port)


def on_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


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


@contextmanager
def quiet_stderr(lines: list[str]):
    """Standard error, both Python's (Ray's log messages) and file descriptor 2 (its C++ core writes there
    directly, and processes started meanwhile inherit it), goes to files while Ray starts or joins; what was
    written is appended to ``lines`` after."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f, redirect_stderr(io.StringIO()) as python:
        os.dup2(f.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            lines += python.getvalue().splitlines() + f.read().decode(errors="replace").splitlines()


def _own_token() -> None:
    """A private instance keeps Ray's token authentication (other users of this machine cannot submit work to
    it), with a token held in this process's environment, which its Ray processes inherit: with no token
    anywhere, Ray would write one to ~/.ray/auth_token. Set once per process (Ray caches the token it read)."""
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _init(ray, mode: str, temp_dir: str | None) -> None:
    if mode == "auto":  # its workers are child processes of this one: they import this drex, not another install's
        root = str(drex.REPO_ROOT)
        path = os.environ.get("PYTHONPATH", "")
        if root not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, path) if p)
    common = {"log_to_driver": False, "configure_logging": False}
    lines: list[str] = []
    try:
        with quiet_stderr(lines):
            if mode == "auto":
                ray.init(address="local", num_cpus=os.cpu_count() or 1, _node_ip_address=LOOPBACK,
                         object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False, _temp_dir=temp_dir,
                         **common)
            else:
                ray.init(address=mode, **common)
    except (ConnectionError, getattr(ray.exceptions, "AuthenticationError", ConnectionError)) as e:  # Ray >= 2.52
        if mode == "auto":
            raise RuntimeError(f"the private Ray instance did not start: {_last(lines, e)}") from e
        token = any("Unauthenticated" in line or "AuthToken" in line for line in lines)
        raise ValueError(f"--ray {mode}: could not join the Ray cluster there: "
                         f"{TOKEN_HINT if token else _last(lines, e)}") from None


def _last(lines: list[str], e: BaseException) -> str:
    """Ray's last word on the failure, without its log prefix ([time W pid tid] file.cc:210: ), else the error."""
    said = [re.sub(r"^\[[^]]*\] \S+:\d+: ", "", line.strip()) for line in lines if line.strip()]
    return said[-1] if said else f"{type(e).__name__}: {e}"


@contextmanager
def _instance(ray, mode: str):
    """Ray, started or joined for the sweep and shut down after (an instance already running is left alone)."""
    if ray.is_initialized():
        yield
        return
    if mode == "auto":
        _own_token()
    temp_dir = tempfile.mkdtemp(prefix="drex-ray-") if mode == "auto" else None
    handler = signal.getsignal(signal.SIGTERM)
    try:
        try:
            _init(ray, mode, temp_dir)
        except SystemExit as e:  # ray.init's own SIGTERM handler: an interrupt like any other
            raise KeyboardInterrupt(f"signal {e.code}") if e.code == signal.SIGTERM else e from None
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)  # ray.init puts in its own (sys.exit): keep the sweep's
        yield
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def run_on_ray(tasks: list[dict], mode: str) -> Iterator[dict]:
    """Yield each task's result as it finishes (any order). ``mode``: auto, or an address that passed ``check_head``."""
    if mode == "auto" or on_loopback(head_address(mode)[0]):
        loopback_env()  # a head on loopback: Ray would look for it at this machine's outward address instead
    import ray

    from drex.explore.tasks import run_task

    with _instance(ray, mode):
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
