"""A local OIDC issuer for the tests: RSA (and EC) keys made here, its discovery document
and JWKS served over HTTP on loopback, and JWTs signed as Microsoft Entra ID signs them.

It also signs users in as an authorization server would (the console's authorization-code
flow with PKCE): ``/authorize`` redirects at once to the client's ``redirect_uri`` with a
code for ``Issuer.user`` (no login page), and ``/token`` redeems the code for an ID token
only with the PKCE verifier whose S256 challenge ``/authorize`` was given."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

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
        # Who /authorize signs in: the claims of the ID token (roles, user name, nonce...).
        self.user: dict[str, Any] = {"preferred_username": "olga@contoso.example",
                                     "roles": ["Provisioning.Operator"]}
        self.codes: dict[str, dict[str, Any]] = {}
        self.redeemed: list[dict[str, str]] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if issuer.down:
                    self.send_error(503)
                    return
                if self.path.startswith("/authorize?"):
                    self._authorize()
                    return
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.url, "jwks_uri": f"{issuer.url}/keys",
                        "authorization_endpoint": f"{issuer.url}/authorize",
                        "token_endpoint": f"{issuer.url}/token"}
                elif self.path == "/keys":
                    issuer.fetches += 1
                    body = {"keys": [key.jwk for key in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                self._json(200, body)

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorize(self) -> None:
                query = dict(parse_qsl(urlsplit(self.path).query))
                code = secrets.token_urlsafe(16)
                issuer.codes[code] = {**query, "user": dict(issuer.user)}
                target = query["redirect_uri"] + "?" + urlencode(
                    {"code": code, "state": query.get("state", "")})
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                issuer.redeemed.append(form)
                grant = issuer.codes.pop(form.get("code", ""), None)
                if self.path != "/token" or grant is None:
                    self._json(400, {"error": "invalid_grant",
                                     "error_description": "unknown or used code"})
                    return
                verifier = form.get("code_verifier", "")
                digest = base64.urlsafe_b64encode(
                    hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                if (grant.get("code_challenge_method") != "S256"
                        or digest != grant.get("code_challenge")
                        or form.get("redirect_uri") != grant.get("redirect_uri")
                        or form.get("client_id") != grant.get("client_id")):
                    self._json(400, {"error": "invalid_grant",
                                     "error_description": "PKCE verification failed"})
                    return
                claims = {"nonce": grant.get("nonce"), **grant["user"]}
                token = issuer.token(audience=grant["client_id"], **claims)
                self._json(200, {"id_token": token, "token_type": "Bearer"})

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
