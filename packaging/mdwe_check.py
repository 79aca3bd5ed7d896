#!/usr/bin/env python3
"""
Would smoltbot's Python stack survive systemd's MemoryDenyWriteExecute=yes?

Run it with the virtualenv's interpreter (/opt/venvs/smoltbot/bin/python). It turns on the
kernel's memory-deny-write-execute for itself (prctl PR_SET_MDWE, Linux 6.3+: the property
MemoryDenyWriteExecute= enforces with seccomp), then signs and verifies an RS256 JWT
(cryptography) and makes a TLS connection over loopback with Twisted, certificate verification
included (pyOpenSSL registers cffi callbacks for it, as for every HTTPS request to a provider).

Exit status: 0 everything works under MDWE; 3 something needs writable+executable memory (the
units must not set MemoryDenyWriteExecute=yes); 2 the kernel cannot enforce MDWE (no answer).
On cffi 2.x and pyOpenSSL 26 the answer is 3: `ffi.callback()` allocates write+execute memory.
"""

from __future__ import annotations

import ctypes
import datetime
import mmap
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def enable_mdwe() -> bool:
    """Turn on memory-deny-write-execute for this process; whether it is now in force."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        return False
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        return True
    return False


def main() -> int:
    if not enable_mdwe():
        print("MDWE: the kernel cannot enforce it here (needs Linux 6.3+): no answer")
        return 2
    print("MDWE in force (a writable+executable mapping is refused)")

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import jwt

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    token = jwt.encode({"sub": "mdwe"}, pem_key, algorithm="RS256")
    assert jwt.decode(token, key.public_key(), algorithms=["RS256"])["sub"] == "mdwe"
    print("ok: cryptography and PyJWT (RS256 sign and verify)")

    try:
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_METHOD)
        context.set_verify(SSL.VERIFY_PEER, lambda *args: True)  # what Twisted's TLS client does
    except MemoryError as e:
        print(f"FAILS: pyOpenSSL certificate verification callback: {e}")
        return 3

    from twisted.internet import defer, protocol, ssl, task
    from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint

    class Echo(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    class Client(protocol.Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"ping")

        def dataReceived(self, data: bytes) -> None:
            self.factory.done.callback(data)
            self.transport.loseConnection()

    result = {"code": 3}

    async def run(reactor) -> None:
        server = ssl.PrivateCertificate.loadPEM(pem_key + pem_cert).options()
        port = await SSL4ServerEndpoint(reactor, 0, server, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Echo))
        client = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(pem_cert))
        factory = protocol.ClientFactory.forProtocol(Client)
        factory.done = defer.Deferred()
        factory.done.addTimeout(10, reactor)
        await SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, client).connect(factory)
        if await factory.done == b"ping":
            result["code"] = 0
        await port.stopListening()

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    print("ok: Twisted TLS with certificate verification" if result["code"] == 0 else "FAILS: Twisted TLS over loopback")
    return result["code"]


if __name__ == "__main__":
    sys.exit(main())
