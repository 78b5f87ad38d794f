"""TLS between nodes, with mutual verification against the cluster's own CA."""

from __future__ import annotations

import os
import ssl


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def tls_contexts(cert: str | os.PathLike | None, key: str | os.PathLike | None,
                 ca: str | os.PathLike | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The (server, client) contexts of a node holding ``cert``/``key``, signed by ``ca``.

    Both sides present their certificate and require one signed by ``ca``. Host
    names are not checked: members are identified by the cluster CA, not by DNS,
    and workers are often dialled by IP; a certificate from that CA is the proof.
    """
    missing = [name for name, value in (("tls_cert", cert), ("tls_key", key), ("tls_ca", ca))
               if not value]
    if missing:
        raise ValueError("TLS needs a certificate, its key and the cluster CA together; missing: "
                         + ", ".join(missing))
    cert, key, ca = os.fspath(cert), os.fspath(key), os.fspath(ca)
    for path, what in ((cert, "certificate"), (key, "key"), (ca, "CA file")):
        _readable(path, what)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load the TLS CA file {ca}: {exc}") from None
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load the TLS certificate {cert} with the key {key}: {exc}") from None
    return server, client
