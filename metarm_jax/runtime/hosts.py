"""Who writes what on a pod, and the barrier after it.

The rule: process 0 (the lead) alone writes the files every process would otherwise write
alike: the synthetic world and a trained tokenizer, build_meta's chunks, manifest and meta file,
HF exports (``save_hf``), ``DONE.json`` markers of the rlhf steps, metrics, reports and the
human-evaluation export. Every such write that another process later reads is followed by
``barrier(name)`` on every process, so no process reads a file before it is complete.
Checkpoints (the train state and the data iterators' state) are written by every process
through orbax, which synchronises them itself.

Preemption (below): SIGTERM, the notice a preemptible TPU or GPU machine gets shortly before it
is taken away, stops the run at the next *preemption point* (a train step, a build_meta chunk,
an rlhf step), the same point on every process, where each saves and leaves.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import jax
from jax.experimental import multihost_utils


def is_lead() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op on one process). ``name`` must
    be the same on every process, in the same order."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# --- a lost process stops the others at once --------------------------------------------------
#
# JAX's coordination service notices a dead process only when its heartbeats stop (tens of
# seconds), and then aborts every other process from C++ with a multi-line fatal log. A killed
# process (OOM killer, preemption, a crash) closes its TCP sockets at once, so each non-lead keeps
# one connection open to the lead: the lead learns within milliseconds that a process is gone,
# and every process learns when the lead is. A process that ends in an orderly way (done, or a
# one-line user error) says "bye" first. The heartbeat stays the fallback for a host that
# vanishes without closing its sockets.

_BYE = b"bye"
_watch: dict = {}


def peer_lost_exit(who: str, detail: str) -> None:
    """Print the one line every process prints when another process of the run is gone, and
    leave at once (not sys.exit: JAX's shutdown barrier would wait for the lost process)."""
    print(
        f"error: process {jax.process_index()} of {jax.process_count()} lost contact with "
        f"another process of the run ({who}: {detail}); run the same command again on every "
        "host to resume from the last checkpoint.",
        file=sys.stderr,
        flush=True,
    )
    os._exit(3)


def _watch_socket(sock, who: str) -> None:
    got = b""
    try:
        while chunk := sock.recv(64):
            got += chunk
    except OSError as e:
        if _watch.get("closing"):
            return
        peer_lost_exit(who, f"connection error {e.__class__.__name__}")
    if _BYE not in got and not _watch.get("closing"):
        peer_lost_exit(who, "its connection closed without an orderly exit")


def start_peer_watch(timeout_s: float) -> None:
    """Open the watch connections (every process calls this once, after
    ``jax.distributed.initialize``); a no-op on one process."""
    from jax._src import distributed

    if jax.process_count() <= 1 or _watch:
        return
    client = distributed.global_state.client
    key = "metarm_jax/peer_watch"
    socks = []
    if is_lead():
        srv = socket.create_server(("", 0))
        srv.settimeout(timeout_s)
        client.key_value_set(key, str(srv.getsockname()[1]))
        for _ in range(jax.process_count() - 1):
            conn, _ = srv.accept()
            conn.settimeout(None)
            hello = b""
            while len(hello) < 16 and (chunk := conn.recv(16 - len(hello))):
                hello += chunk
            pid = int(hello.decode().strip() or "-1")
            socks.append((conn, f"process {pid}"))
        srv.close()
    else:
        port = int(client.blocking_key_value_get(key, int(timeout_s * 1000)))
        host = (distributed.global_state.coordinator_address or "127.0.0.1").rsplit(":", 1)[0]
        conn = socket.create_connection((host.strip("[]"), port), timeout=timeout_s)
        conn.settimeout(None)
        conn.sendall(f"{jax.process_index():<16d}".encode())
        socks.append((conn, "process 0"))
    _watch["socks"] = [s for s, _ in socks]
    for s, who in socks:
        threading.Thread(target=_watch_socket, args=(s, who), daemon=True).start()


def stop_peer_watch() -> None:
    """Say "bye" to the watched processes: this one ends in an orderly way."""
    _watch["closing"] = True
    for s in _watch.get("socks", ()):
        try:
            s.sendall(_BYE)
            s.close()
        except OSError:
            pass


# --- preemption: every process stops at the same point -----------------------------------------
#
# The code calls ``preemption_point()`` at every boundary where the run can stop and resume
# exactly (after a train step, after a build_meta chunk, before an rlhf step), in the same order
# on every process. It returns True at the one boundary where all processes stop:
#  - several processes (jax.distributed): JAX's preemption service catches SIGTERM on whichever
#    host gets it, tells the others through the coordination service, and agrees on the next
#    boundary every process can still reach (``multihost_utils.reached_preemption_sync_point``
#    with a count of boundaries: each process sends the count it has reached, the sync point is
#    the largest + 1);
#  - one process: a SIGTERM handler sets a flag, and the next boundary stops.
# Nothing is exchanged until a notice arrives: a boundary costs a lock and a comparison.

_preempt = {"service": False, "received": False, "points": 0}


def _on_sigterm(signum, frame) -> None:
    del signum, frame
    _preempt["received"] = True


def watch_preemption() -> str:
    """Make SIGTERM stop the run at the next preemption point (call once, after
    ``jax.distributed.initialize``). Returns how: "jax" (the preemption service of
    jax.distributed), "signal" (one process: a handler), or "off" (several processes with
    ``jax_enable_preemption_service`` off: SIGTERM ends the process as before, and the others
    stop with the lost-process line)."""
    from jax._src import distributed

    if distributed.global_state.client is not None:
        _preempt["service"] = distributed.global_state.preemption_sync_manager is not None
        return "jax" if _preempt["service"] else "off"
    signal.signal(signal.SIGTERM, _on_sigterm)
    return "signal"


def preemption_point() -> bool:
    """True when the run stops here for a preemption notice (every process gets True at the
    same call). Every process must call this at the same boundaries, in the same order."""
    _preempt["points"] += 1
    if _preempt["service"]:
        return multihost_utils.reached_preemption_sync_point(_preempt["points"])
    return bool(_preempt["received"])
