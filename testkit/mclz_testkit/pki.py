"""A throw-away PKI for TLS tests, made with openssl: CAs, a server and client certificates."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mclz_testkit.common import MissingDependencyError, ServiceError


@dataclass(frozen=True)
class Pki:
    """Certificates made by the tests with openssl: a CA, a server, clients (one of another CA)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    stranger_cert: Path  # a client certificate signed by the other CA
    stranger_key: Path


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, check=False, timeout=60)
    if done.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")


def make_test_pki(directory: Path) -> Pki:
    """Make a throw-away PKI for TLS tests: server certificate valid for 127.0.0.1/localhost.

    Raises:
        ServiceError: openssl is missing or failed.
    """
    if shutil.which("openssl") is None:
        raise MissingDependencyError("openssl is not installed: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def ca(name: str) -> tuple[Path, Path]:
        cert, key = d / f"{name}.crt", d / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
        )  # fmt: skip
        return cert, key

    def leaf(name: str, ca_pair: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
        cert, key, csr, ext = (d / f"{name}.{x}" for x in ("crt", "key", "csr", "ext"))
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        usage = "serverAuth" if server else "clientAuth"
        san = "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""
        ext.write_text(f"{san}extendedKeyUsage={usage}\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_pair[0]), "-CAkey", str(ca_pair[1]),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext),
        )  # fmt: skip
        return cert, key

    main_ca = ca("test-ca")
    other_ca = ca("other-ca")
    server = leaf("server", main_ca, server=True)
    client = leaf("box-01", main_ca, server=False)
    stranger = leaf("stranger", other_ca, server=False)
    return Pki(
        main_ca[0],
        server[0],
        server[1],
        client[0],
        client[1],
        other_ca[0],
        stranger[0],
        stranger[1],
    )
