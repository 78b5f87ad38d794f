"""Node addresses, written ``tcp://host:port``."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import NamedTuple


class Address(NamedTuple):
    """``tcp://host:port``; ``tcp://host:port+`` (``walk``) takes the next free port from ``port`` up."""

    host: str
    port: int
    walk: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}{'+' if self.walk else ''}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("", "0.0.0.0", "::")


def parse_address(text: str | Address) -> Address:
    """Parse ``tcp://host:port`` (also ``host:port``, and ``port+`` to walk up from a taken
    port); raise ValueError naming the text."""
    if isinstance(text, Address):
        return text
    if not isinstance(text, str):
        raise ValueError(f"an address must be a string like 'tcp://host:port', not {text!r}")
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme != "tcp":
            raise ValueError(f"unsupported address scheme {scheme!r} in {text!r}; use tcp://host:port")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise ValueError(f"address {text!r} has no port; use tcp://host:port")
    walk = port.endswith("+")
    if walk:
        port = port[:-1]
    try:
        port_number = int(port)
    except ValueError:
        raise ValueError(f"address {text!r} has an invalid port {port!r}") from None
    if not 0 <= port_number <= 65535:
        raise ValueError(f"address {text!r}: port {port_number} out of range")
    if not host:
        raise ValueError(f"address {text!r} has no host")
    if walk and port_number == 0:
        raise ValueError(f"address {text!r}: port 0 already means any free port; drop the '+'")
    return Address(host, port_number, walk)


def advertised_hosts(host: str) -> list[str]:
    """The hosts to advertise for a listen host: itself, or this machine's IPs for a wildcard."""
    if host not in ("", "0.0.0.0", "::"):
        return [host]
    hosts: list[str] = []
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM)
        for info in infos:
            ip = info[4][0]
            if ip not in hosts and not ip.startswith("127."):
                hosts.append(ip)
    except OSError:
        pass
    for ip in _interface_ips():
        if ip not in hosts and not ip.startswith("127."):
            hosts.append(ip)
    hosts.append("127.0.0.1")
    return hosts


def _interface_ips() -> list[str]:
    """IPv4 addresses of this machine's interfaces (Linux ioctl; empty elsewhere)."""
    try:
        import fcntl
        import struct
    except ImportError:  # pragma: no cover - not POSIX
        return []
    ips = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:  # pragma: no cover
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            ips.append(socket.inet_ntoa(packed[20:24]))
    return ips


def port_holder(port: int) -> str | None:
    """Who listens on TCP ``port`` here: ``pid N (command), uid U`` as far as /proc tells (Linux)."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes[fields[9]] = fields[7]  # inode -> uid
        except (OSError, ValueError, IndexError):
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    for pid in filter(str.isdigit, _listdir("/proc")):
        for fd in _listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link in targets:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        command = " ".join(f.read().decode(errors="replace").replace("\0", " ").split())
                except OSError:
                    command = "?"
                return f"pid {pid} ({command[:120]}), uid {inodes[targets[link]]}"
    return f"uid {next(iter(inodes.values()))}, a process this user cannot see"


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
