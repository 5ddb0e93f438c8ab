"""API keys and user passwords: generated, hashed with a per-secret salt, verified in constant time.

Neither keys nor passwords are ever stored in clear. An API key looks like Octopus's
(`API-` + 26 upper-case letters and digits, about 134 bits); the store keeps a short prefix of
it (6 characters, not enough to guess the rest) to find the candidate rows, and a PBKDF2-SHA256
hash to confirm. Passwords are low-entropy, so they get scrypt. Verifying a key costs a few
milliseconds, so `ApiKeyAuthenticator` remembers keys it has verified (by SHA-256 digest, never
the key) and re-checks only that the key still exists, which is one indexed lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import threading
from collections import OrderedDict

from octopus_comms.store import ApiKey, Store, User, ValidationFailed

API_KEY_PREFIX = "API-"
API_KEY_LENGTH = 26
API_KEY_ALPHABET = string.ascii_uppercase + string.digits
LOOKUP_PREFIX_LENGTH = 6
PBKDF2_ITERATIONS = 10_000       # keys carry ~134 bits of entropy: stretching is a formality
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SALT_BYTES = 16
_API_KEY_RE = re.compile(r"API-[A-Z0-9]{16,64}")
_DUMMY_SALT = b"\x00" * SALT_BYTES


def generate_api_key() -> str:
    """A fresh key in Octopus's format: `API-` + 26 random upper-case alphanumerics."""
    return API_KEY_PREFIX + "".join(secrets.choice(API_KEY_ALPHABET)
                                    for _ in range(API_KEY_LENGTH))


def normalize_api_key(text: str) -> str | None:
    """The key in canonical (upper-case) form, or None if it cannot be one of ours."""
    candidate = text.strip().upper()
    return candidate if _API_KEY_RE.fullmatch(candidate) else None


def lookup_prefix(key: str) -> str:
    """The non-secret part stored in clear to find a key's row."""
    return key[len(API_KEY_PREFIX):len(API_KEY_PREFIX) + LOOKUP_PREFIX_LENGTH]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def hash_api_key(key: str, salt: bytes | None = None) -> str:
    """`pbkdf2-sha256$ITERATIONS$SALT$HASH` (base64 parts)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", key.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return f"pbkdf2-sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(digest)}"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$R$P$SALT$HASH` (base64 parts)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """True if `secret` matches a hash made by `hash_api_key` or `hash_password`."""
    try:
        parts = encoded.split("$")
        if parts[0] == "pbkdf2-sha256" and len(parts) == 4:
            iterations, salt, expected = int(parts[1]), _unb64(parts[2]), _unb64(parts[3])
            if not 1 <= iterations <= 10_000_000:
                return False
            actual = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
        elif parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, expected = _unb64(parts[4]), _unb64(parts[5])
            actual = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                                    dklen=len(expected), maxmem=256 * 1024 * 1024)
        else:
            return False
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# ----------------------------------------------------------------------------- operations

def create_api_key(store: Store, name: str, user_id: str | None = None) -> tuple[ApiKey, str]:
    """Create a key for `user_id` (default: the built-in administrator); returns (row, key).

    The key itself is returned once and never stored.
    """
    if not name or not name.strip():
        raise ValidationFailed(["Please provide a purpose (name) for the API key."])
    key = generate_api_key()
    owner = store.get_user(user_id) if user_id else store.get_user(store.ADMIN_USER_ID)
    record = store.add_api_key(owner.id, name.strip(), lookup_prefix(key), hash_api_key(key))
    return record, key


def create_user(store: Store, username: str, display_name: str | None = None,
                password: str | None = None, is_admin: bool = False) -> User:
    """Create a user (the password, if any, stored as an scrypt hash)."""
    password_hash = hash_password(password) if password else None
    return store.create_user(username, display_name or username, password_hash, is_admin)


def set_password(store: Store, user_id: str, password: str) -> User:
    if not password:
        raise ValidationFailed(["The password must not be empty."])
    return store.set_user_password_hash(user_id, hash_password(password))


def verify_user_password(store: Store, username: str, password: str) -> User | None:
    """The active user with that username and password, else None (for the web portal)."""
    user = store.find_user(username)
    if user is None or not user.is_active or user.password_hash is None:
        verify_secret(password, hash_password("", _DUMMY_SALT))  # similar time either way
        return None
    return user if verify_secret(password, user.password_hash) else None


class ApiKeyAuthenticator:
    """Maps an `X-Octopus-ApiKey` value to its stored key, caching verified keys by digest.

    Thread-safe. A revoked key stops working at once: a cache hit is re-checked against the
    store (one indexed lookup), and misses are never cached.
    """

    def __init__(self, store: Store, cache_size: int = 1024) -> None:
        self._store = store
        self._cache: OrderedDict[bytes, str] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def authenticate(self, presented: str) -> ApiKey | None:
        key = normalize_api_key(presented)
        if key is None:
            return None
        digest = hashlib.sha256(key.encode("ascii")).digest()
        with self._lock:
            key_id = self._cache.get(digest)
            if key_id is not None:
                self._cache.move_to_end(digest)
        if key_id is not None:
            record = self._store.find_api_key(key_id)
            if record is not None:
                return record
            with self._lock:
                self._cache.pop(digest, None)
            return None
        candidates = self._store.api_keys_with_prefix(lookup_prefix(key))
        if not candidates:
            verify_secret(key, hash_api_key(key, _DUMMY_SALT))  # similar time either way
            return None
        for candidate in candidates:
            if verify_secret(key, candidate.key_hash):
                with self._lock:
                    self._cache[digest] = candidate.id
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
                return candidate
        return None
