"""A small emulated LAN for scripts/netbench.py: one network namespace per host on one bridge,
each host's link shaped in both directions with tc tbf. Root only; traffic never leaves the
machine (the addresses are private and the bridge has no uplink). Always torn down: use it as
a context manager, which also undoes a half-built lab."""
from __future__ import annotations

import os
import re
import shutil
import itertools
import subprocess

SUBNET = "10.213.0"          # host k is SUBNET.(k+1); host 0 runs the coordinator
_LABS = itertools.count()
RATE_FORM = re.compile(r"^(none|\d+(\.\d+)?[kmg]?bit)$")


class LabError(RuntimeError):
    """The lab cannot be built here; the message says what the user can do."""


def check_can_build() -> None:
    if os.geteuid() != 0:
        raise LabError("the network bench builds network namespaces, which needs root; run it as root "
                       "(e.g. sudo .venv/bin/python scripts/netbench.py ...)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise LabError(f"the network bench needs `{tool}` (iproute2); install it, e.g. apt-get "
                           f"install iproute2")


def check_rate(rate: str) -> str:
    if not RATE_FORM.match(rate):
        raise LabError(f"link rate {rate!r} is not a tc rate: use e.g. none, 100mbit, 1gbit, 10gbit")
    return rate


def bytes_per_s(rate: str) -> float:
    """A tc rate ("1gbit") in bytes per second."""
    number, unit = re.match(r"^([\d.]+)([kmg]?)bit$", rate).groups()
    return float(number) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[unit] / 8


# veth hands tbf segments of up to 64 KiB (GSO); a bucket that holds only one of them throttled
# every link below the rate (25 workers at 1 Gbit/s, dilation 20, 50 Mbit/s links: 4,764 chars/s
# with a 64 KiB bucket, 8,476 with 256 KiB)
MIN_BURST_BYTES = 256 * 1024


def _burst(rate: str) -> str:
    """tbf needs a bucket of at least rate/HZ; large enough that fast links are not capped by it,
    and several GSO segments deep."""
    return f"{max(MIN_BURST_BYTES, int(bytes_per_s(rate) / 100))}b"


class Lab:
    """hosts namespaces; rates[k] is host k's link rate ("none" = unshaped)."""

    def __init__(self, rates: list[str], tag: str | None = None):
        self.rates = [check_rate(r) for r in rates]
        self.tag = tag or f"nb{os.getpid() % 10000}{next(_LABS)}"
        self.bridge = f"{self.tag}br"
        self.namespaces = [f"{self.tag}h{k}" for k in range(len(rates))]
        self.built: list[str] = []

    def address(self, host: int) -> str:
        return f"{SUBNET}.{host + 1}"

    def exec_prefix(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[host]]

    def __enter__(self) -> "Lab":
        try:
            self._run("ip", "link", "add", self.bridge, "type", "bridge")
            self.built.append("bridge")
            self._run("ip", "link", "set", self.bridge, "up")
            for host, (namespace, rate) in enumerate(zip(self.namespaces, self.rates)):
                self._add_host(host, namespace, rate)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_host(self, host: int, namespace: str, rate: str) -> None:
        outside, inside = f"{self.tag}v{host}", f"{self.tag}e{host}"
        self._run("ip", "netns", "add", namespace)
        self.built.append(namespace)
        self._run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        self.built.append(outside)
        self._run("ip", "link", "set", outside, "master", self.bridge)
        self._run("ip", "link", "set", outside, "up")
        self._run("ip", "link", "set", inside, "netns", namespace)
        self._run("ip", "-n", namespace, "addr", "add", f"{self.address(host)}/24", "dev", inside)
        self._run("ip", "-n", namespace, "link", "set", inside, "up")
        self._run("ip", "-n", namespace, "link", "set", "lo", "up")
        if rate != "none":
            tbf = ["root", "tbf", "rate", rate, "burst", _burst(rate), "latency", "100ms"]
            self._run("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", inside, *tbf)  # host -> LAN
            self._run("tc", "qdisc", "add", "dev", outside, *tbf)                                 # LAN -> host

    def link_bytes(self, host: int) -> tuple[int, int]:
        """(received, sent) bytes so far on host's link, read inside its namespace."""
        inside = f"{self.tag}e{host}"
        text = subprocess.run([*self.exec_prefix(host), "cat", "/proc/net/dev"], capture_output=True,
                              text=True, check=True).stdout
        for line in text.splitlines():
            name, _, counters = line.partition(":")
            if name.strip() == inside:
                fields = counters.split()
                return int(fields[0]), int(fields[8])
        raise LabError(f"no link {inside} in {self.namespaces[host]}")

    def close(self) -> None:
        """Deletes what was built, newest first (a veth pair goes with either end)."""
        for thing in reversed(self.built):
            if thing in self.namespaces:
                subprocess.run(["ip", "netns", "del", thing], capture_output=True)
            else:
                subprocess.run(["ip", "link", "del", self.bridge if thing == "bridge" else thing],
                               capture_output=True)
        self.built = []

    @staticmethod
    def _run(*command: str) -> None:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
