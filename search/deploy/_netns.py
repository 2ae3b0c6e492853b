"""Linux network namespaces joined by shaped veth pairs: one namespace per tier.

Tier ``i`` lives in namespace ``eenn-<pid>-<tag>-t<i>`` (``pid``: the creating process);
link ``i`` is a veth pair whose ends sit in the namespaces of tiers ``i`` and ``i + 1`` with
the addresses ``10.231.<i>.1/30`` and ``10.231.<i>.2/30`` (each namespace has its own routing
table, so parallel deployments may use the same addresses). The sending end is shaped with
the ``tbf`` qdisc at the link's bandwidth. A token bucket lets a burst through at once, so a
slow link gets a small MTU (a BLE data PDU is at most 251 bytes): the bucket then holds one
small packet and a sample is paced over most of its bytes. ``netem`` is not used (often
absent), so a link's propagation latency is added by the receiving worker, not by the kernel.
Everything is created by :func:`network` and removed when it exits, also on errors and Ctrl-C;
namespaces left by a creator that was killed outright (SIGKILL) are removed by the next
:func:`network`. Only namespace addresses are ever configured.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["NetPlan", "NetnsError", "Shaping", "network", "unavailable", "wire_bytes"]

PREFIX = "eenn-"
_SLOW_BPS = 10e6  # links below this get the small MTU
_SMALL_MTU = 296


class NetnsError(RuntimeError):
    """A namespace, veth or qdisc could not be made (the message quotes ``ip``/``tc``)."""


@dataclass(frozen=True, kw_only=True)
class Shaping:
    """The tbf settings of one link, as applied."""

    rate_bits_per_s: float
    burst_bytes: int
    limit_bytes: int
    mtu: int


@dataclass(frozen=True, kw_only=True)
class NetPlan:
    """The namespaces of a deployment: per tier its namespace, per link its addresses."""

    namespaces: tuple[str, ...]
    senders: tuple[str, ...]  # link i: address of tier i's end
    receivers: tuple[str, ...]  # link i: address of tier i+1's end (where it listens)
    interfaces: tuple[str, ...]  # link i: the sending veth (in tier i's namespace)
    shaping: tuple[Shaping, ...]


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "the ip/tc tools (iproute2) are not installed"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _tc(ns: str, *args: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise NetnsError(f"tc {' '.join(args)} in {ns} failed: {done.stderr.strip()}")


def shaping_for(bandwidth_bits_per_s: float) -> Shaping:
    """tbf settings for one link: a one-packet bucket on slow links, 4 ms of rate on fast."""
    slow = bandwidth_bits_per_s < _SLOW_BPS
    mtu = _SMALL_MTU if slow else 1500
    burst = max(mtu + 14, int(bandwidth_bits_per_s / 8 * 0.004))
    limit = max(64 * 1024, int(bandwidth_bits_per_s / 8 * 2.0))  # 2 s of queue, never drop
    return Shaping(rate_bits_per_s=bandwidth_bits_per_s, burst_bytes=burst, limit_bytes=limit,
                   mtu=mtu)


def _link(plan_ns: Sequence[str], i: int, tag: str, shape: Shaping | None) -> tuple[str, str, str]:
    a, b = f"e{tag}{i}a", f"e{tag}{i}b"
    src, dst = f"10.231.{i}.1", f"10.231.{i}.2"
    _ip("link", "add", a, "netns", plan_ns[i], "type", "veth", "peer", "name", b,
        "netns", plan_ns[i + 1])
    for ns, dev, addr in ((plan_ns[i], a, src), (plan_ns[i + 1], b, dst)):
        if shape is not None:
            _ip("-n", ns, "link", "set", dev, "mtu", str(shape.mtu))
        _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
    if shape is not None:
        _tc(plan_ns[i], "qdisc", "add", "dev", a, "root", "tbf",
            "rate", f"{int(shape.rate_bits_per_s)}bit", "burst", str(shape.burst_bytes),
            "limit", str(shape.limit_bytes))
    return src, dst, a


@contextmanager
def network(n_tiers: int, bandwidths: Sequence[float | None]) -> Iterator[NetPlan]:
    """Create the namespaces and links of ``n_tiers`` tiers (``bandwidths[i]``: link i's
    rate, None = unshaped), yield their plan, and remove them all on exit."""
    _remove_orphans()
    tag = secrets.token_hex(3)
    names = tuple(f"{PREFIX}{os.getpid()}-{tag}-t{i}" for i in range(n_tiers))
    made: list[str] = []
    try:
        for ns in names:
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        shapes = [None if bw is None else shaping_for(bw) for bw in bandwidths[: n_tiers - 1]]
        links = [_link(names, i, tag, s) for i, s in enumerate(shapes)]
        yield NetPlan(namespaces=names, senders=tuple(s for s, _, _ in links),
                      receivers=tuple(r for _, r, _ in links),
                      interfaces=tuple(a for _, _, a in links),
                      shaping=tuple(s for s in shapes if s is not None))
    finally:
        for ns in reversed(made):  # deleting a namespace deletes the veth ends inside it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _remove_orphans() -> None:
    """Delete the namespaces of creators that no longer exist."""
    for ns in leftovers():
        pid = ns[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        except PermissionError:
            pass


def wire_bytes(ns: str, dev: str) -> int:
    """Bytes the interface ``dev`` of namespace ``ns`` has sent (Ethernet frames)."""
    done = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev],
                          capture_output=True, text=True, check=True)
    return int(json.loads(done.stdout)[0]["stats64"]["tx"]["bytes"])


def leftovers(*, own: bool = False) -> list[str]:
    """Namespaces of this module that exist now (``own``: made by this process); tests check
    that none is left behind."""
    done = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True,
                          check=False)
    if done.returncode or not done.stdout.strip():
        return []
    prefix = f"{PREFIX}{os.getpid()}-" if own else PREFIX
    return [e["name"] for e in json.loads(done.stdout) if e["name"].startswith(prefix)]
