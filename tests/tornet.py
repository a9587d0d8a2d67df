"""
A private Tor network on loopback, for end-to-end tests.

:class:`TorNetwork` builds one directory authority and a few relays from
Debian's ``tor`` and ``tor-gencert`` (``TestingTorNetwork 1``, short voting
intervals, reachability assumed), starts them, and waits until the
authority's consensus lists every relay.  Only then should an onion host or
a client join: started earlier, they can stall for minutes on an incomplete
consensus.  :meth:`TorNetwork.network_config` writes the torrc lines that let
any other tor (an appliance's launched tor, a client) use the network;
:meth:`TorNetwork.add_client` starts a client with a SOCKS port.

At least four relays in all (the authority is one) are needed: an onion
service's rendezvous circuits have three hops plus the rendezvous point.

Every process is tied to this one (``__OwningControllerProcess``) and is
terminated by :meth:`TorNetwork.stop`, which the context manager calls even
when a test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["TorNetwork", "TorNetworkError", "free_port", "rss_bytes"]


class TorNetworkError(Exception):
    """The network could not be built or did not come up in time."""


_used_ports: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise TorNetworkError("no free port")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class TorNode:
    """One tor process of the network."""

    name: str
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def torrc(self) -> Path:
        """Where this node's torrc is written."""
        return self.data_dir / "torrc"

    def log_tail(self, n: int = 15) -> str:
        """The end of this node's notice log, for failure messages."""
        try:
            lines = (self.data_dir / "notice.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"  {self.name}: {line}" for line in lines[-n:])


class TorNetwork:
    """A private Tor network on loopback: one authority and ``relays`` relays."""

    def __init__(self, base: Path, relays: int = 3, tor: str | None = None,
                 gencert: str | None = None) -> None:
        self.base = Path(base)
        self.tor = tor or shutil.which("tor") or "tor"
        self.gencert = gencert or shutil.which("tor-gencert") or "tor-gencert"
        self.relay_count = relays
        self.nodes: list[TorNode] = []
        self._dir_authority: str | None = None
        self.authority_dirport = 0
        self._empty = self.base / "empty"

    # -- building --

    def _run(self, args: list[str], cwd: Path | None = None, stdin: bytes = b"") -> str:
        result = subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, timeout=60)
        if result.returncode != 0:
            raise TorNetworkError(
                f"{' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def _base_lines(self, node: TorNode) -> list[str]:
        return [
            "TestingTorNetwork 1",
            f"DataDirectory {node.data_dir}",
            f"Nickname {node.name}",
            "Address 127.0.0.1",
            "SocksPort 0",
            f"Log notice file {node.data_dir / 'notice.log'}",
            "SafeLogging 0",
            "AssumeReachable 1",
            f"__OwningControllerProcess {os.getpid()}",
            f"PidFile {node.data_dir / 'pid'}",
            # An empty GeoIP database saves tens of MB per process.
            f"GeoIPFile {self._empty}",
            f"GeoIPv6File {self._empty}",
            "ShutdownWaitLength 0",
        ]

    def _new_node(self, name: str) -> TorNode:
        d = self.base / name
        d.mkdir(mode=0o700, parents=True)
        node = TorNode(name, d)
        self.nodes.append(node)
        return node

    def build(self) -> None:
        """Generate the authority's keys and every torrc, and check each with --verify-config."""
        self.base.mkdir(parents=True, exist_ok=True)
        self._empty.write_text("")

        auth = self._new_node("auth0")
        orport, dirport = free_port(), free_port()
        self.authority_dirport = dirport
        keys = auth.data_dir / "keys"
        keys.mkdir(mode=0o700)
        # Empty passphrase from stdin: without --passphrase-fd, tor-gencert
        # insists on a non-empty one.
        self._run([self.gencert, "--create-identity-key", "--passphrase-fd", "0", "-m", "12",
                   "-a", f"127.0.0.1:{dirport}"], cwd=keys)
        v3ident = next(
            line.split()[1] for line in (keys / "authority_certificate").read_text().splitlines()
            if line.startswith("fingerprint "))
        # The relay identity key (and its fingerprint) comes from tor itself.
        self._run([self.tor, "--list-fingerprint", "--defaults-torrc", str(self._empty),
                   "-f", str(self._empty), "--DataDirectory", str(auth.data_dir),
                   "--ORPort", str(orport), "--Nickname", auth.name, "--quiet"])
        fingerprint = (auth.data_dir / "fingerprint").read_text().split()[1]
        self._dir_authority = (f"DirAuthority {auth.name} orport={orport} no-v2 v3ident={v3ident} "
                               f"127.0.0.1:{dirport} {fingerprint}")

        auth.lines = self._base_lines(auth) + [
            f"ORPort 127.0.0.1:{orport}",
            f"DirPort 127.0.0.1:{dirport}",
            "AuthoritativeDirectory 1",
            "V3AuthoritativeDirectory 1",
            "ContactInfo auth0@example.invalid",
            # Vote every 20 s instead of every hour (the first consensus
            # otherwise takes over a minute).
            "TestingV3AuthInitialVotingInterval 20",
            "TestingV3AuthInitialVoteDelay 2",
            "TestingV3AuthInitialDistDelay 2",
            "V3AuthVotingInterval 20",
            "V3AuthVoteDelay 2",
            "V3AuthDistDelay 2",
            "V3AuthNIntervalsValid 2",
            # Flags that would otherwise need hours of uptime or bandwidth.
            "TestingDirAuthVoteGuard *",
            "TestingDirAuthVoteExit *",
            "TestingDirAuthVoteHSDir *",
            "TestingMinExitFlagThreshold 0",
            self._dir_authority,
        ]
        for i in range(self.relay_count):
            relay = self._new_node(f"relay{i}")
            relay.lines = self._base_lines(relay) + [
                f"ORPort 127.0.0.1:{free_port()}",
                f"DirPort 127.0.0.1:{free_port()}",
                "ExitRelay 0",
                self._dir_authority,
            ]
        for node in self.nodes:
            self._write(node)

    def _write(self, node: TorNode) -> None:
        node.torrc.write_text("\n".join(node.lines) + "\n")
        # A bad torrc run quietly exits without a word: check each one first.
        self._run([self.tor, "--verify-config", "--defaults-torrc", str(self._empty), "-f", str(node.torrc)])

    def network_config(self, path: Path) -> Path:
        """Write the torrc lines that join another tor to this network; return ``path``."""
        if self._dir_authority is None:
            raise TorNetworkError("build() the network first")
        path.write_text("\n".join([
            "TestingTorNetwork 1",
            self._dir_authority,
            "PathsNeededToBuildCircuits 0.67",
            f"GeoIPFile {self._empty}",
            f"GeoIPv6File {self._empty}",
        ]) + "\n")
        return path

    # -- running --

    def _start(self, node: TorNode) -> None:
        node.process = subprocess.Popen(
            [self.tor, "--defaults-torrc", str(self._empty), "-f", str(node.torrc), "--quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 120.0) -> float:
        """Start the authority and relays; wait for a consensus listing all of them.

        Returns the seconds it took.
        """
        began = time.monotonic()
        for node in self.nodes:
            self._start(node)
        deadline = began + timeout
        want = len(self.nodes)
        seen = 0
        while time.monotonic() < deadline:
            self._check_alive()
            seen = self._consensus_relays()
            if seen >= want:
                return time.monotonic() - began
            time.sleep(1)
        raise TorNetworkError(
            f"the consensus listed {seen} of {want} relays after {timeout:g} s\n{self.log_tails()}")

    def _consensus_relays(self) -> int:
        url = f"http://127.0.0.1:{self.authority_dirport}/tor/status-vote/current/consensus"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode(errors="replace")
        except OSError:
            return 0
        running = 0
        for line in text.splitlines():
            if line.startswith("s ") and "Running" in line.split():
                running += 1
        return running

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None:
                raise TorNetworkError(
                    f"{node.name} exited with status {node.process.returncode}\n{node.log_tail()}")

    def add_client(self) -> int:
        """Start a client tor with a SOCKS port on 127.0.0.1; return the port."""
        client = self._new_node(f"client{sum(n.name.startswith('client') for n in self.nodes)}")
        socks = free_port()
        client.lines = [
            "TestingTorNetwork 1",
            f"DataDirectory {client.data_dir}",
            f"SocksPort 127.0.0.1:{socks}",
            f"Log notice file {client.data_dir / 'notice.log'}",
            "SafeLogging 0",
            f"__OwningControllerProcess {os.getpid()}",
            f"GeoIPFile {self._empty}",
            f"GeoIPv6File {self._empty}",
            "PathsNeededToBuildCircuits 0.67",
            str(self._dir_authority),
        ]
        self._write(client)
        self._start(client)
        return socks

    def pids(self) -> list[int]:
        """The pids of the running tor processes."""
        return [n.process.pid for n in self.nodes if n.process is not None and n.process.poll() is None]

    def log_tails(self) -> str:
        """The end of every node's log."""
        return "\n".join(n.log_tail() for n in self.nodes)

    def stop(self) -> None:
        """Terminate every tor process (SIGTERM, then SIGKILL after 10 s)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=10)

    def __enter__(self) -> TorNetwork:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
