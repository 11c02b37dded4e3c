"""unpkg.com, as far as the browser tests are concerned: the pinned npm packages the docs' pages
load from it, fetched once with ``npm pack`` into ``.pytest-tmp/npm/`` (the test machine
reaches the npm registry, not unpkg), served over HTTPS on 127.0.0.1 with a self-signed
certificate for unpkg.com. Chromium reaches it with ``--host-resolver-rules`` and
``--ignore-certificate-errors`` (:attr:`Unpkg.chromium_args`), so a page loads exactly the
URLs the docs show. Only the versions pinned here are served: a page asking for another
gets a 404 and fails its test.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".pytest-tmp" / "npm"

#: name -> versions, as the docs pin them (``https://unpkg.com/NAME@VERSION/PATH``).
PINNED = {"htmx.org": ("2.0.11", "4.0.1"), "htmx-ext-sse": ("2.2.4",)}


def fetch(name: str, version: str) -> Path:
    """The unpacked npm package ``name@version`` (its ``package/`` directory), from the cache
    or fetched with npm."""
    target = CACHE / f"{name}@{version}"
    if (target / "package" / "package.json").is_file():
        return target / "package"
    work = CACHE / f".{name}@{version}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        packed = subprocess.run(
            ["npm", "pack", f"{name}@{version}", "--silent"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if packed.returncode != 0:
            reason = f"npm pack {name}@{version} failed: {packed.stderr.strip()[-500:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        with tarfile.open(work / packed.stdout.strip().splitlines()[-1]) as archive:
            archive.extractall(work / "unpacked", filter="data")
        with contextlib.suppress(OSError):  # a run that got there first: keep its copy
            (work / "unpacked").rename(target)  # whole, or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "package"


class Unpkg:
    """The stand-in server; ``with Unpkg() as cdn:`` serves until the block ends."""

    def __init__(self, workdir: Path) -> None:
        self.files = {(name, v): fetch(name, v) for name, vs in PINNED.items() for v in vs}
        self.requests: list[str] = []
        cert, key = _self_signed(workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        handler = _handler(self)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def chromium_args(self) -> list[str]:
        return [
            f"--host-resolver-rules=MAP unpkg.com 127.0.0.1:{self.port}",
            "--ignore-certificate-errors",
        ]

    def path_of(self, url_path: str) -> Path | None:
        """The file for ``/NAME@VERSION/PATH``, or None."""
        spec, _, rest = url_path.lstrip("/").partition("/")
        name, _, version = spec.rpartition("@")
        package = self.files.get((name, version))
        if package is None or ".." in rest.split("/"):
            return None
        path = package / rest
        return path if path.is_file() else None

    def __enter__(self) -> Unpkg:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _handler(cdn: Unpkg) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            cdn.requests.append(self.path)
            path = cdn.path_of(self.path.split("?")[0])
            if path is None:
                self.send_error(404, f"not a pinned file: {self.path}")
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the requests are in cdn.requests

    return Handler


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate and key for unpkg.com, made for this run."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unpkg.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("unpkg.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "unpkg.pem", workdir / "unpkg.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
