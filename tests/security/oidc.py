"""A tiny OpenID Connect issuer for the security tests: a client credentials token endpoint
that issues RS256-signed JWTs, and the JWKS the broker checks them against.

Each registered client gets tokens for its own subject (the broker's principal is
``User:<sub>``). Kinds of client exist to make tokens a broker must refuse: one whose
tokens are already expired, one whose tokens are signed with a key the JWKS does not hold
(under the JWKS key's own ``kid``, so that only the signature gives them away), and one
whose tokens are well signed but for another audience.

Signing is done with ``cryptography`` (PKCS#1 v1.5, SHA-256: RS256), which the project
already depends on for its TLS material, so no JWT library is needed.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

AUDIENCE = "kafka"
KID = "streamproc-test-1"
Kind = Literal["valid", "expired", "wrong-key", "wrong-audience"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass
class Client:
    secret: str
    sub: str
    kind: Kind = "valid"


@dataclass
class Issuer:
    """Serve with :meth:`start`; register clients with :meth:`add_client`."""

    lifetime_s: int = 300
    clients: dict[str, Client] = field(default_factory=dict)
    issued: int = 0  # tokens handed out, for the tests to see the endpoint was asked

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._server: ThreadingHTTPServer | None = None

    # -- addresses -----------------------------------------------------------------------

    @property
    def base(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def token_url(self) -> str:
        return f"{self.base}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.base}/jwks"

    # -- tokens --------------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str, sub: str, kind: Kind = "valid") -> None:
        self.clients[client_id] = Client(secret, sub, kind)

    def jwks(self) -> dict[str, Any]:
        pub = self._key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
                          "n": _uint(pub.n), "e": _uint(pub.e)}]}  # fmt: skip

    def token(self, client: Client, scope: str | None) -> tuple[str, int]:
        """A signed JWT for ``client`` and its lifetime in seconds (negative: expired)."""
        now = int(time.time())
        life = -120 if client.kind == "expired" else self.lifetime_s
        aud = "not-kafka" if client.kind == "wrong-audience" else AUDIENCE
        claims: dict[str, Any] = {"iss": self.base, "sub": client.sub, "aud": aud,
                                  "iat": now - 600 if life < 0 else now,
                                  "exp": now + life}  # fmt: skip
        if scope:
            claims["scope"] = scope
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        key = self._other if client.kind == "wrong-key" else self._key
        sig = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64(sig)}", life

    # -- the server ----------------------------------------------------------------------

    def start(self) -> Issuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, doc: dict[str, Any]) -> None:
                payload = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/jwks":
                    self._send(200, issuer.jwks())
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                if self.path.split("?")[0] != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                client_id, secret = self._basic(form)
                client = issuer.clients.get(client_id)
                if form.get("grant_type") != ["client_credentials"]:
                    self._send(400, {"error": "unsupported_grant_type"})
                elif client is None or client.secret != secret:
                    self._send(401, {"error": "invalid_client"})
                else:
                    token, life = issuer.token(client, form.get("scope", [None])[0])
                    issuer.issued += 1
                    self._send(200, {"access_token": token, "token_type": "Bearer",
                                     "expires_in": max(life, 0)})  # fmt: skip

            def _basic(self, form: dict[str, list[str]]) -> tuple[str, str]:
                """The client's id and secret: HTTP Basic (as librdkafka and streamproc send
                them), else the form's client_id and client_secret."""
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    raw = base64.b64decode(auth[6:]).decode()
                    client_id, _, secret = raw.partition(":")
                    return client_id, secret
                return form.get("client_id", [""])[0], form.get("client_secret", [""])[0]

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
