"""The link between ranks, measured at start-up on the transport the run uses, and cached per machine.

Ping-pongs of a few sizes (4 bytes up to twice the largest activation) give one-way times (the lower quartile of
each size's round trips, halved: a round trip during which another process held either end's core measures that
process, not the link); ``LinkModel.fit`` draws latency + bytes / bandwidth through them. Between processes the
messages go through ``DistTransport`` (gloo stages device tensors through host memory; NCCL moves device memory),
and the link is a rendezvous: a transfer starts once its receive is posted (``LinkModel.rendezvous``);
within one process they are the device copies ``LocalTransport`` makes, which cost nothing when every stage is on
one device.
Each measurement is cached in ``~/.cache/pipegraph/links.json`` (``PIPEGRAPH_CACHE`` overrides the folder) under
the conditions it was taken in: host, transport, devices, torch version, threads, processes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from partition.timing import LinkModel
from runtime.comm import Backend, DistTransport, Message, all_reduce_sum
from runtime.output import write_json
from runtime.stats import Spread

TAG_BASE = 1 << 24  # above every pipeline message tag


def ping_sizes(max_bytes: float) -> list[int]:
    """Message sizes in bytes: 4, then powers of 4 up to at least ``max_bytes`` (a multiple of 4 each)."""
    sizes, n = [4], 1024
    while n < max_bytes:
        sizes.append(n)
        n *= 4
    return sizes + [max(n, 8)]


def dist_link(backend: Backend, device: torch.device, max_bytes: float, rank: int, timeout: float,
              repeats: int = 20, peers: list[int] | None = None) -> tuple[LinkModel, list[tuple[int, float]]]:
    """Ping-pong between pipeline ranks 0 and 1 through ``DistTransport`` (every process must call this; the others
    wait). ``rank`` is this process's pipeline rank and ``peers`` maps pipeline ranks to global ones (one replica of a
    data-parallel grid; every replica measures its own pair at once and the mean is kept).

    Returns the fitted link, shared by every rank, and the (bytes, one-way seconds) medians it was fitted from.
    """
    transport = DistTransport(backend, timeout, peers)
    sizes = ping_sizes(max_bytes)
    found = torch.zeros(len(sizes) + 1, dtype=torch.float64)  # the last entry counts the pairs that measured
    if rank in (0, 1):
        for k, size in enumerate([4] + sizes):  # one round of 4-byte trips first: the pair's connection is set up
            buf = torch.zeros(size // 4, dtype=torch.float32, device=device)
            trips = []
            for i in range(repeats + 2):
                tag = TAG_BASE + 2 * (k * (repeats + 2) + i)  # each message its own tag
                there, back = Message(("link", k, i, 0), tag, 1 - rank), Message(("link", k, i, 1), tag + 1, 1 - rank)
                start = time.perf_counter()
                if rank == 0:
                    transport.send(there, buf, device)
                    transport.recv(back, buf.shape, buf.dtype, device)
                else:
                    transport.send(back, transport.recv(there, buf.shape, buf.dtype, device), device)
                transport.flush()
                trips.append(time.perf_counter() - start)
            if rank == 0 and k > 0:
                found[k - 1] = Spread.of(trips[2:]).p25 / 2
        found[-1] = 1.0 if rank == 0 else 0.0
    found = all_reduce_sum(found)
    points = [(s, float(t) / max(float(found[-1]), 1.0)) for s, t in zip(sizes, found[:-1])]
    fitted = LinkModel.fit([p[0] for p in points], [p[1] for p in points])
    return replace(fitted, rendezvous=True), points  # point-to-point starts a transfer once its receive is posted


def local_link(src: torch.device, dst: torch.device, max_bytes: float,
               repeats: int = 10) -> tuple[LinkModel, list[tuple[int, float]]]:
    """One-way device-to-device copy times within this process (free when ``src`` is ``dst``)."""
    if src == dst:
        return LinkModel(), []
    points = []
    for size in ping_sizes(max_bytes):
        buf = torch.zeros(size // 4, dtype=torch.float32, device=src)
        trips = []
        for _ in range(repeats + 2):
            start = time.perf_counter()
            back = buf.to(dst).to(src)
            for d in (src, dst):
                if d.type == "cuda":
                    torch.cuda.synchronize(d)
            del back
            trips.append(time.perf_counter() - start)
        points.append((size, Spread.of(trips[2:]).p25 / 2))
    return LinkModel.fit([p[0] for p in points], [p[1] for p in points]), points


def conditions(transport: str, devices: list[str], processes: int) -> dict:
    """What a link measurement depends on, as the key it is cached under."""
    names = sorted({torch.cuda.get_device_name(torch.device(d)) if d.startswith("cuda") else "cpu" for d in devices})
    return {"host": socket.gethostname(), "transport": transport, "devices": names, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "processes": processes}


def cache_path() -> Path:
    """Where measured links are kept: $PIPEGRAPH_CACHE/links.json, default ~/.cache/pipegraph/links.json."""
    folder = os.environ.get("PIPEGRAPH_CACHE") or Path.home() / ".cache" / "pipegraph"
    return Path(folder) / "links.json"


def read_cache() -> list[dict]:
    """Every cached link measurement (an unreadable or malformed file counts as empty)."""
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def store(cond: dict, link: LinkModel, points: list[tuple[int, float]]) -> None:
    """Keep ``link`` as the measurement for ``cond`` (replacing an older one); a cache that cannot be written is
    skipped silently: the run has its measurement either way."""
    bw = None if link.bandwidth == float("inf") else link.bandwidth
    entry = {"conditions": cond, "latency": link.latency, "bandwidth": bw, "rendezvous": link.rendezvous, "points": points,
             "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    kept = [e for e in read_cache() if e.get("conditions") != cond] + [entry]
    try:
        write_json(cache_path(), kept)
    except OSError:
        pass


def cached_link(transport: str | None = None) -> tuple[LinkModel, dict]:
    """The most recent measured link on this host (of ``transport`` when given): (link, its cache entry).

    ValueError when none was measured yet (a torchrun training run measures one at start-up).
    """
    host = socket.gethostname()
    found = [e for e in read_cache() if e.get("conditions", {}).get("host") == host
             and (transport is None or e["conditions"].get("transport") == transport)]
    if not found:
        raise ValueError(f"link: no link measured on {host} yet (run a torchrun training job first, or give "
                         f"--latency/--bandwidth or a preset); cache: {cache_path()}")
    entry = max(found, key=lambda e: e.get("measured_at", ""))
    bw = entry.get("bandwidth")
    between = entry.get("conditions", {}).get("transport") in ("gloo", "nccl")  # entries from before the flag: by kind
    return LinkModel(float(entry["latency"]), float("inf") if bw is None else float(bw),
                     bool(entry.get("rendezvous", between))), entry
