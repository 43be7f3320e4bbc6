"""RFC 7523 client assertions (`private_key_jwt`): the gateway proves its client identity with a
short-lived JWT signed by its own private key, so no shared secret sits in the config."""

from __future__ import annotations

import os
import time
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_CURVE_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}


def load_private_key(pem: str) -> tuple[Any, str]:
    """The key and its default algorithm. Raises ValueError (never quoting the key) if unusable."""
    for kind in (ECKey, RSAKey, OKPKey):
        try:
            key: Any = kind.import_key(pem)
        except (JoseError, ValueError, TypeError):
            continue
        if not key.is_private:
            raise ValueError("private_key holds a public key; the gateway signs with the private one")
        alg = "RS256" if isinstance(key, RSAKey) else _CURVE_ALGS.get(key.curve_name)
        if alg is None:
            raise ValueError(f"unsupported key curve {key.curve_name}")
        return key, alg
    raise ValueError("private_key is not a PEM private key (RSA, EC or Ed25519)")


def client_assertion(key: Any, alg: str, client_id: str, audience: str, key_id: str | None = None,
                     lifetime: int = 60) -> str:
    now = int(time.time())
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if key_id:
        header["kid"] = key_id
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + lifetime,
              "jti": os.urandom(16).hex()}
    return jwt.encode(header, claims, key, algorithms=[alg])
