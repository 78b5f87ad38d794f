"""Node addresses, written ``tcp://host:port``."""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

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
    """Parse ``tcp://host:port`` (also ``host:port``); raise ValueError naming the text."""
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
    try:
        port_number = int(port)
    except ValueError:
        raise ValueError(f"address {text!r} has an invalid port {port!r}") from None
    if not 0 <= port_number <= 65535:
        raise ValueError(f"address {text!r}: port {port_number} out of range")
    if not host:
        raise ValueError(f"address {text!r} has no host")
    return Address(host, port_number)


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
