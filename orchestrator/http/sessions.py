"""Browser sessions for the dashboard: with `API_TOKEN` set, the login page exchanges the token for a signed,
HttpOnly, SameSite=strict cookie, so that pages and their live updates need no header a browser cannot send.

The cookie is `issued.nonce.signature`, signed with a key derived from the token: nothing is stored server-side,
every instance of the app accepts it, and changing the token ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SESSION_COOKIE = "orchestrator_session"
SESSION_SECONDS = 12 * 3600


def _signature(token: str, message: str) -> str:
    key = hashlib.sha256(b"orchestrator-dashboard-session:" + token.encode()).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def new_session(token: str, now: float | None = None) -> str:
    message = f"{int(now if now is not None else time.time())}.{secrets.token_hex(16)}"
    return f"{message}.{_signature(token, message)}"


def valid_session(token: str, cookie: str | None, now: float | None = None) -> bool:
    """Signed with this token, and issued less than SESSION_SECONDS ago."""
    if not cookie or cookie.count(".") != 2:
        return False
    message, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(signature, _signature(token, message)):
        return False
    issued = message.partition(".")[0]
    age = (now if now is not None else time.time()) - int(issued)
    return 0 <= age < SESSION_SECONDS
