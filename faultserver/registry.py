"""A real OCI registry for ``blobdl pull`` tests: Debian's ``docker-registry`` (CNCF
distribution) on a free loopback port, plus a small token server and push helpers.

``start_registry(tmp, auth=token)`` runs ``docker-registry serve`` with filesystem storage
(or S3 storage when given ``s3_endpoint``); ``push_model`` pushes a fake Ollama model by
the registry HTTP API with Ollama's media types. The token server runs as
``python -m faultserver.registry token --dir DIR``: it signs RS256 JWTs with a self-signed
certificate the registry trusts, and can be told to hand out short-lived tokens.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .nodelay import NoDelayServer

REPO_ROOT = Path(__file__).resolve().parent.parent
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
READY_TIMEOUT = 15.0
SERVICE = "blobdl-test-registry"
ISSUER = "blobdl-test-issuer"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_TYPES = (
    "application/vnd.ollama.image.model",
    "application/vnd.ollama.image.template",
    "application/vnd.ollama.image.params",
    "application/vnd.ollama.image.license",
)
_ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d+)')
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with _OPENER.open(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # 401 from an auth-protected /v2/ is ready too
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{url} not ready:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s: a server of the tests ends, whatever it was doing."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Server(NoDelayServer, ThreadingHTTPServer):
    """The token server's and the relay's: a threaded HTTP server that sends at once."""


# --- the token server -------------------------------------------------------------------------


@dataclass
class TokenServer:
    proc: subprocess.Popen[bytes]
    url: str  # its realm
    cert: Path
    log: Path

    def control(self, **settings: Any) -> dict[str, Any]:
        """``ttls=[1, ...]``: lifetimes (s) of the next tokens, past distribution's 60 s leeway;
        ``credentials="user:pass"``: Basic credentials it then requires."""
        req = urllib.request.Request(
            self.url.replace("/token", "/ctl"), json.dumps(settings).encode()
        )
        with _OPENER.open(req, timeout=5) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def stats(self) -> dict[str, Any]:
        with _OPENER.open(self.url.replace("/token", "/stats"), timeout=5) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def token(self, scope: str) -> str:
        query = f"?service={SERVICE}&scope={scope}"
        with _OPENER.open(self.url + query, timeout=5) as resp:
            token: str = json.loads(resp.read())["token"]
            return token

    def stop(self) -> None:
        stop_process(self.proc)


def start_token_server(folder: Path) -> TokenServer:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "token.log"
    cmd = [
        sys.executable,
        "-m",
        "faultserver.registry",
        "token",
        "--dir",
        str(folder),
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/token"
    _wait_http(url.replace("/token", "/stats"), proc, log)
    return TokenServer(proc, url, folder / "cert.pem", log)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _make_cert(folder: Path) -> tuple[Any, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blobdl test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert.public_bytes(serialization.Encoding.DER)


def _serve_tokens(folder: Path, port: int) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key, der = _make_cert(folder)
    state: dict[str, Any] = {"ttls": [], "credentials": None, "issued": 0, "refused": 0}

    def sign(scope: str) -> str:
        access = []
        for item in filter(None, scope.split(" ")):
            kind, name_actions = item.split(":", 1)
            name, _, actions = name_actions.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        ttl = state["ttls"].pop(0) if state["ttls"] else 3600
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "tester",
            "aud": SERVICE,
            "exp": int(time.time() + ttl) - 60,  # distribution allows 60 s of leeway past exp
            "nbf": now - 10,
            "iat": now,
            "jti": str(random.getrandbits(64)),
            "access": access,
        }
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.requestline} {self.headers.get('Authorization', '-')}\n")

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/stats":
                self._reply(200, {k: state[k] for k in ("issued", "refused")})
                return
            wanted = state["credentials"]
            if wanted is not None:
                given = self.headers.get("Authorization", "")
                if given != "Basic " + base64.b64encode(wanted.encode()).decode():
                    state["refused"] += 1
                    self._reply(401, {"error": "bad credentials"})
                    return
            scope = " ".join(parse_qs(parts.query).get("scope", []))
            state["issued"] += 1
            self._reply(200, {"token": sign(scope)})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.update(json.loads(self.rfile.read(length) or b"{}"))
            self._reply(200, {"ok": True})

    _Server(("127.0.0.1", port), Handler).serve_forever()


# --- the registry -----------------------------------------------------------------------------


@dataclass
class Registry:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path  # filesystem storage (unused with S3)
    log: Path
    tokens: TokenServer | None = None
    push_auth: dict[str, str] = field(default_factory=dict)
    ca: str | None = None  # with TLS: the CA file the pushes trust

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.host}"

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far, from the access log."""
        return [(m, p, int(s)) for m, p, s in _ACCESS.findall(self.log.read_text())]

    def blob_file(self, digest: str) -> Path:
        hex_ = digest.partition(":")[2]
        return self.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def stop(self) -> None:
        stop_process(self.proc)
        if self.tokens is not None:
            self.tokens.stop()

    # --- pushing ---------------------------------------------------------------------------

    def _headers(self, repo: str) -> dict[str, str]:
        if self.tokens is None:
            return {}
        token = self.tokens.token(f"repository:{repo}:pull,push")
        return {"Authorization": f"Bearer {token}"}

    def _call(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> Any:
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        if self.ca is None:
            return _OPENER.open(req, timeout=30)
        tls = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=self.ca))
        return urllib.request.build_opener(urllib.request.ProxyHandler({}), tls).open(
            req, timeout=30
        )

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        headers = self._headers(repo)
        with self._call("POST", f"{self.url}/v2/{repo}/blobs/uploads/", b"", headers) as resp:
            location = resp.headers["Location"]
        target = location if location.startswith("http") else self.url + location
        sep = "&" if "?" in target else "?"
        put_headers = {**headers, "Content-Type": "application/octet-stream"}
        with self._call("PUT", f"{target}{sep}digest={digest}", data, put_headers):
            pass
        return digest

    def push_manifest(
        self, repo: str, tag: str, raw: bytes, media_type: str = MANIFEST_TYPE
    ) -> None:
        headers = {**self._headers(repo), "Content-Type": media_type}
        with self._call("PUT", f"{self.url}/v2/{repo}/manifests/{tag}", raw, headers):
            pass

    def push_model(
        self, repo: str, tag: str, sizes: tuple[int, ...], seed: int = 0, shared: bytes = b""
    ) -> Model:
        """A fake model: a config and one layer per size (the first is the model layer;
        ``shared`` adds a layer other models may share)."""
        rng = random.Random(f"{repo}:{tag}:{seed}")
        layers = [rng.randbytes(size) for size in sizes] + ([shared] if shared else [])
        config = json.dumps({"model_format": "gguf", "repo": repo, "seed": seed}).encode()
        blobs = {self.push_blob(repo, data): data for data in [config, *layers]}
        entries = [
            {"mediaType": MODEL_TYPES[min(i, 3)], "digest": _digest(data), "size": len(data)}
            for i, data in enumerate(layers)
        ]
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
            "layers": entries,
        }
        raw = json.dumps(manifest, indent=3).encode()
        self.push_manifest(repo, tag, raw)
        return Model(repo, tag, raw, blobs)


@dataclass(frozen=True)
class Model:
    repo: str
    tag: str
    manifest: bytes  # exactly as pushed
    blobs: dict[str, bytes]  # digest -> bytes, the config included

    @property
    def digest(self) -> str:
        return _digest(self.manifest)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def start_registry(
    folder: Path,
    *,
    tokens: TokenServer | None = None,
    s3: dict[str, Any] | None = None,
    tls: tuple[str, str, str] | None = None,
) -> Registry:
    """``docker-registry serve`` on a free port: filesystem storage under ``folder``, or S3
    (``s3`` holds the driver's parameters) with redirects to presigned URLs; HTTPS when
    given ``tls`` (certificate, key, and the CA file that vouches for them)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    root = folder / "storage"
    storage: dict[str, Any] = {"delete": {"enabled": True}}
    if s3 is None:
        storage["filesystem"] = {"rootdirectory": str(root)}
    else:
        storage["s3"] = s3
        storage["redirect"] = {"disable": False}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "text"},
        "storage": storage,
        "http": {"addr": f"127.0.0.1:{port}", "secret": "blobdl-tests"},
    }
    if tls is not None:
        config["http"]["tls"] = {"certificate": tls[0], "key": tls[1]}
    if tokens is not None:
        token = {"realm": tokens.url, "service": SERVICE, "issuer": ISSUER}
        config["auth"] = {"token": {**token, "rootcertbundle": str(tokens.cert)}}
    config_path = folder / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log = folder / "registry.log"
    # Its S3 driver panics when AWS_CA_BUNDLE is set.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    # Plain HTTP to a TLS port is answered 400, which is ready too.
    _wait_http(f"http://127.0.0.1:{port}/v2/", proc, log)
    return Registry(proc, port, root, log, tokens, ca=tls[2] if tls else None)


# --- a logging reverse proxy in front of S3 ---------------------------------------------------


RELAY_CTL = "/__relay/faults"


def _serve_relay(target: str, port: int, log: Path) -> None:
    """Forward every request to ``target``; append ``METHOD PATH?QUERY AUTH`` per request to
    ``log`` (AUTH is the Authorization header's scheme, or ``-``). A POST to ``RELAY_CTL``
    sets fault rules ``{"match": TEXT, "skip": N, "status": 403}``: the first GET whose path
    holds TEXT after N such GETs gets ``status`` (an S3-style error) instead, once. A rule
    ``{"match": TEXT, "range": RANGE, "hold": S}`` holds every GET whose path holds TEXT
    (and whose Range header is RANGE, if given) S seconds before it is forwarded; a GET of
    ``RELAY_CTL`` answers ``{"held_peak": N}``, the most such GETs held at once."""
    import http.client
    import threading
    import time

    upstream = urlsplit(target)
    rules: list[dict[str, Any]] = []
    lock = threading.Lock()
    held = {"now": 0, "peak": 0}

    def hold(path: str, byte_range: str | None) -> None:
        with lock:
            seconds = next((r["hold"] for r in rules if "hold" in r and r["match"] in path
                            and r.get("range", byte_range) == byte_range), None)  # fmt: skip
            if seconds is None:
                return
            held["now"] += 1
            held["peak"] = max(held["peak"], held["now"])
        time.sleep(seconds)
        with lock:
            held["now"] -= 1

    def fault(path: str) -> int | None:
        with lock:
            for rule in rules:
                if rule["match"] not in path or "hold" in rule:
                    continue
                if rule["skip"] > 0:
                    rule["skip"] -= 1
                    return None
                rules.remove(rule)
                return int(rule.get("status", 403))
        return None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _relay(self) -> None:
            auth = self.headers.get("Authorization", "-").split(" ")[0]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else None
            if self.path == RELAY_CTL:
                with lock:
                    if self.command == "GET":
                        answer = json.dumps({"held_peak": held["peak"]}).encode()
                    else:
                        rules[:] = json.loads(body or b"[]")
                        answer = b"<ok/>"
                self._reply(200, answer)
                return
            with log.open("a") as f:
                f.write(f"{self.command} {self.path} {auth}\n")
            status = fault(self.path) if self.command == "GET" else None
            if self.command == "GET":
                hold(self.path, self.headers.get("Range"))
            if status is not None:
                self._reply(status, b"<Error><Code>AccessDenied</Code>"
                            b"<Message>Request has expired</Message></Error>")  # fmt: skip
                return
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

    _Server(("127.0.0.1", port), Handler).serve_forever()


@dataclass
class Relay:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def seen(self) -> list[tuple[str, str, str]]:
        """(method, path with query, Authorization scheme or "-") of every request."""
        if not self.log.exists():
            return []
        rows = [line.rsplit(" ", 2) for line in self.log.read_text().splitlines()]
        return [(m, p, a) for m, p, a in rows]

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(self.url + RELAY_CTL, json.dumps(rules).encode())
        with _OPENER.open(req, timeout=5):
            pass

    def held_peak(self) -> int:
        """The most GETs a ``hold`` rule held at once so far."""
        with _OPENER.open(self.url + RELAY_CTL, timeout=5) as resp:
            return int(json.loads(resp.read())["held_peak"])

    def stop(self) -> None:
        stop_process(self.proc)


def start_relay(folder: Path, target: str) -> Relay:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "relay.log"
    cmd = [sys.executable, "-m", "faultserver.registry", "relay", "--dir", str(folder),
           "--port", str(port), "--target", target]  # fmt: skip
    with (folder / "relay.out").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url, proc, folder / "relay.out")
    return Relay(proc, url, log)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m faultserver.registry")
    parser.add_argument("what", choices=["token", "relay"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", help="relay: the server to forward to")
    args = parser.parse_args()
    if args.what == "token":
        _serve_tokens(Path(args.dir), args.port)
    else:
        _serve_relay(args.target, args.port, Path(args.dir) / "relay.log")


if __name__ == "__main__":
    main()


# --- S3 storage (moto) ------------------------------------------------------------------------


@dataclass
class S3Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def driver(self, bucket: str) -> dict[str, Any]:
        """The registry's S3 driver parameters for ``bucket`` on this server."""
        return {
            "accesskey": "blobdl",
            "secretkey": "blobdl-secret",
            "region": "us-east-1",
            "regionendpoint": self.url,
            "bucket": bucket,
            "secure": False,
            "v4auth": True,
        }

    def create_bucket(self, bucket: str) -> None:
        with _OPENER.open(urllib.request.Request(f"{self.url}/{bucket}", method="PUT"), timeout=10):
            pass

    def stop(self) -> None:
        stop_process(self.proc)


def start_s3(folder: Path) -> S3Server:
    """``moto_server`` on a free port (objects live in its memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "s3.log"
    binary = Path(sys.executable).with_name("moto_server")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    _wait_http(url, proc, log)
    return S3Server(proc, url, log)
