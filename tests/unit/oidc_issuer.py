"""A local OIDC issuer for the tests: RSA (and EC) keys made here, its discovery document
and JWKS served over HTTP on loopback, and JWTs signed as Microsoft Entra ID signs them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "api://provisioning-state"


class SigningKey:
    """A private key and its public JWK (``kid`` given)."""

    def __init__(self, kid: str, algorithm: str = "RS256") -> None:
        self.kid = kid
        self.algorithm = algorithm
        self.private: Any
        if algorithm == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk: dict[str, Any] = {**jwk, "kid": kid, "use": "sig"}


class Issuer:
    """Serves ``/.well-known/openid-configuration`` and ``/keys`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = [SigningKey("key-1")]
        self.fetches = 0
        self.down = False
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if issuer.down:
                    self.send_error(503)
                    return
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": issuer.url,
                                            "jwks_uri": f"{issuer.url}/keys"}
                elif self.path == "/keys":
                    issuer.fetches += 1
                    body = {"keys": [key.jwk for key in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, *, key: SigningKey | None = None, roles: list[str] | None = None,
              audience: str = AUDIENCE, issuer: str | None = None, lifetime: float = 3600,
              not_before: float | None = None, **claims: Any) -> str:
        signer = key or self.keys[0]
        now = time.time()
        payload: dict[str, Any] = {
            "iss": issuer or self.url, "aud": audience, "iat": int(now),
            "exp": int(now + lifetime), "sub": str(uuid.uuid4()),
            "preferred_username": "ana@contoso.example",
            "roles": ["Provisioning.Operator"] if roles is None else roles, **claims}
        if not_before is not None:
            payload["nbf"] = int(not_before)
        return jwt.encode(payload, signer.private, algorithm=signer.algorithm,
                          headers={"kid": signer.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    try:
        yield issuer
    finally:
        issuer.close()
