"""TLS between nodes: both sides present a certificate of the cluster CA, or no connection."""

from __future__ import annotations

import datetime
import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bndl_like import ExecutionContext, FuncTask, Job
from bndl_like.rmi import HandshakeError, Node, NotConnected
from bndl_like.rmi.tls import tls_contexts

from ..execute import helpers

REFUSED = (NotConnected, HandshakeError, OSError)


class Echo:
    def echo(self, value):
        return value


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem(path, data: bytes, mode: int = 0o644) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


class CA:
    """A certificate authority in ``directory`` that issues node certificates."""

    def __init__(self, directory, name: str):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        self.path = _pem(directory / f"{name}.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str) -> dict:
        """The tls_cert/tls_key/tls_ca options of a node called ``name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return {"tls_cert": _pem(self.directory / f"{name}.pem", cert_pem),
                "tls_key": _pem(self.directory / f"{name}.key", key_pem, 0o600),
                "tls_ca": self.path}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The cluster CA with certificates for nodes a and b, and a rogue CA with one for c."""
    directory = tmp_path_factory.mktemp("pki")
    cluster, rogue = CA(directory, "cluster-ca"), CA(directory, "rogue-ca")
    return {"a": cluster.issue("a"), "b": cluster.issue("b"), "rogue": rogue.issue("c")}


async def test_nodes_of_one_ca_connect_and_call(make_node, pki):
    a = await make_node("a", **pki["a"])
    a.add_service("echo", Echo())
    b = await make_node("b", **pki["b"])
    peer = await b.connect(a.addresses[0])
    assert await peer.call("echo", "echo", "over tls") == "over tls"
    # plain text does not reach a TLS node
    plain = await make_node("plain", connect_timeout=2)
    with pytest.raises(REFUSED):
        await plain.connect(a.addresses[0])


async def test_a_certificate_of_another_ca_is_refused(make_node, pki):
    a = await make_node("a", **pki["a"])
    a.add_service("echo", Echo())
    rogue = await make_node("rogue", connect_timeout=2, **pki["rogue"])
    with pytest.raises(REFUSED):
        await rogue.connect(a.addresses[0])
    with pytest.raises(REFUSED):
        await a.connect(rogue.addresses[0])
    assert "rogue" not in a.peers and "a" not in rogue.peers
    b = await make_node("b", **pki["b"])
    assert await (await b.connect(a.addresses[0])).call("echo", "echo", 1) == 1  # a still serves


async def test_a_client_without_a_certificate_is_refused(make_node, pki):
    a = await make_node("a", **pki["a"])
    # trusts the cluster CA but presents no certificate of its own
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(pki["a"]["tls_ca"])
    client = await make_node("anonymous", client_ssl_context=anonymous, connect_timeout=2)
    with pytest.raises(REFUSED):
        await client.connect(a.addresses[0])
    assert "anonymous" not in a.peers


def test_the_three_files_go_together(pki, tmp_path):
    with pytest.raises(ValueError, match="missing: tls_key, tls_ca"):
        tls_contexts(pki["a"]["tls_cert"], None, None)
    with pytest.raises(ValueError, match=f"cannot read the TLS key {tmp_path / 'nope'}"):
        tls_contexts(pki["a"]["tls_cert"], tmp_path / "nope", pki["a"]["tls_ca"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match=f"CA file {garbage}"):
        tls_contexts(pki["a"]["tls_cert"], pki["a"]["tls_key"], garbage)
    with pytest.raises(ValueError, match="certificate .* with the key"):
        tls_contexts(pki["a"]["tls_cert"], pki["b"]["tls_key"], pki["a"]["tls_ca"])
    server, client = tls_contexts(**{k.removeprefix("tls_"): v for k, v in pki["a"].items()})
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2


def test_node_options_and_their_environment(pki, monkeypatch):
    with pytest.raises(ValueError, match="not both"):
        Node("x", ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
             client_ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), **pki["a"])
    with pytest.raises(ValueError, match="invalid value for tls_cert .*no such file"):
        Node("x", tls_cert="/nonexistent.pem", tls_key=pki["a"]["tls_key"], tls_ca=pki["a"]["tls_ca"])
    for name, path in pki["a"].items():
        monkeypatch.setenv("BNDL_LIKE_" + name.upper(), path)
    assert Node("x").client_ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_a_local_cluster_with_tls(pki):
    with ExecutionContext.local(workers=1, **pki["a"]) as ctx:
        assert ctx.await_workers() == 1
        assert list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.add, (1, 2))]))) == [3]
