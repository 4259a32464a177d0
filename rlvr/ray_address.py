"""Whether a Ray cluster address can be joined, told in a second: Ray itself retries for
minutes before it gives up. Used by ``rlvr-train`` (``cluster.address``) and offline scoring
(``--ray``) alike."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def unreachable_ray(address: str) -> str | None:
    """Why the Ray cluster at ``address`` cannot be joined, or None: ``auto`` needs a cluster
    started on this machine (or RAY_ADDRESS); HOST:PORT and ray://HOST:PORT must accept a
    connection."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or ""
        if not address:
            if Path("/tmp/ray/ray_current_cluster").exists():  # written by `ray start` on this machine
                return None
            return ("auto, but no Ray cluster runs on this machine and RAY_ADDRESS is unset (start one with "
                    "`ray start --head`, or leave it unset to start Ray inside the job)")
    host, _, port = address.split("://")[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not HOST:PORT, ray://HOST:PORT or auto"
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        return (f"nothing answers at {host}:{port} ({err.strerror or err}); is the Ray head started there "
                "(`ray start --head --port=...`)?")
    return None
