"""Who writes what on a pod, and the barrier after it.

The rule: process 0 (the lead) alone writes the files every process would otherwise write
alike: the synthetic world and a trained tokenizer, build_meta's chunks, manifest and meta file,
HF exports (``save_hf``), ``DONE.json`` markers of the rlhf steps, metrics, reports and the
human-evaluation export. Every such write that another process later reads is followed by
``barrier(name)`` on every process, so no process reads a file before it is complete.
Checkpoints (the train state and the data iterators' state) are written by every process
through orbax, which synchronises them itself.
"""

from __future__ import annotations

import os
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
