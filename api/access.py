"""Who may change things, until the API has authentication: only this machine.

Every request that is not a read (any method but GET, HEAD, OPTIONS) is refused
with a 403 unless it comes from a loopback address, or the operator turned
``AGENTWATCH_API_ALLOW_REMOTE_MUTATIONS`` on. The API also listens on loopback
by default (``AGENTWATCH_API_HOST=127.0.0.1``); this guard holds when someone
changes that. The peer address is the TCP peer as uvicorn reports it (uvicorn
takes ``X-Forwarded-For`` only from the proxies in its ``forwarded_allow_ips``,
127.0.0.1 by default, so a remote client cannot claim to be local; a reverse
proxy on this machine makes every request local, so put none in front of the
API until it authenticates).

>>> refusal("GET", "203.0.113.9", allow_remote=False) is None
True
>>> refusal("POST", "::1", allow_remote=False) is None
True
>>> refusal("DELETE", "203.0.113.9", allow_remote=False)[:60]
'DELETE from 203.0.113.9 refused: until the API authenticates'
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agentwatch.identity import parse_key
from agentwatch.settings import Settings
from api.publisher import request_origin

#: Methods that read only.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The routes agents post to from their own hosts (the REST bridge, their credentials, the
#: OTLP/HTTP receiver): a request to one with a key passes this guard, and the route lets a
#: remote caller through only with an agent's key
#: (``api.routes.credentials.remote_agents_only``).
AGENT_ROUTES = re.compile(
    r"/api/v1/agents/[^/]+/(?:metrics|events|credentials)|/v1/(?:metrics|traces)"
)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is a loopback IP address (127.0.0.0/8, ::1, ::ffff:127.x.y.z).

    Anything that is not an IP address (a missing peer, a Unix socket, a name)
    is not loopback.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "::ffff:127.0.0.1")]
    [True, True, True, True]
    >>> [is_loopback(h) for h in ("10.0.0.1", "localhost", "", None, "0.0.0.0")]
    [False, False, False, False, False]
    """
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def keyless_refusal(headers: Mapping[str, str]) -> str | None:
    """Why a request without a key may not act as the keyless demo's loopback operator
    (None: it may). Keyless is for programs on this machine; a browser on this machine
    reaches loopback too, for any web page it shows. So a request that a browser sent
    (it says so: ``Sec-Fetch-Site``, or an ``Origin``) is refused when it comes from a
    page of another site (forms and no-cors fetches need no CORS preflight to reach a
    POST), or names a host that is not loopback (a DNS-rebinding page talks to 127.0.0.1
    under its own name, as its own origin: only ``Host`` tells).

    >>> keyless_refusal({"host": "testserver"}) is None  # (a program: curl, httpx, a test)
    True
    >>> keyless_refusal({"host": "localhost:8000", "origin": "http://localhost:8000",
    ...                  "sec-fetch-site": "same-origin"}) is None  # the console, keyless
    True
    >>> keyless_refusal({"host": "127.0.0.1:8000", "origin": "https://evil.example",
    ...                  "sec-fetch-site": "cross-site"})  # doctest: +ELLIPSIS
    'a request without a key from a web page of another site (cross-site) refused: ...'
    >>> keyless_refusal({"host": "rebind.evil.example:8000",
    ...                  "sec-fetch-site": "same-origin"})  # doctest: +ELLIPSIS
    "a request without a key to 'rebind.evil.example:8000' refused: ..."
    """
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site is None and origin is None:
        return None
    host = headers.get("host", "")
    if not _loopback_name(_hostname(f"//{host}")):
        return (
            f"a request without a key to {host!r} refused: keyless, the API answers a "
            "browser only at 127.0.0.1, ::1 or localhost (a web page may give it any name)"
        )
    if site not in (None, "same-origin", "none"):
        return (
            f"a request without a key from a web page of another site ({site}) refused: "
            "send a key (the keyless demo is for programs on this machine)"
        )
    if origin is not None and not _loopback_name(_hostname(origin)):
        return (
            f"a request without a key from a web page of {origin[:100]!r} refused: send a "
            "key (the keyless demo is for programs on this machine)"
        )
    return None


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _loopback_name(name: str | None) -> bool:
    return name == "localhost" or is_loopback(name)


def refusal(method: str, client_host: str | None, allow_remote: bool) -> str | None:
    """Why a request may not run (None: it may)."""
    if method.upper() in SAFE_METHODS or allow_remote or is_loopback(client_host):
        return None
    return (
        f"{method.upper()} from {client_host or 'an unknown address'} refused: until the API "
        "authenticates its callers, only this machine (loopback) may change anything; send it "
        "from the API's host, or set AGENTWATCH_API_ALLOW_REMOTE_MUTATIONS=true to accept "
        "changes from anywhere"
    )


class LoopbackMutations:
    """ASGI middleware: answer 403 (:func:`refusal`) to a change from another machine."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allow_remote = settings.api_allow_remote_mutations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            host = client[0] if client else None
            request_origin.set(host or "")  # the audit trail's "from where"
            reason = refusal(scope["method"], host, self.allow_remote)
            if reason is not None and _keyed_agent_route(scope):
                reason = None  # the route decides: agents' keys only
            if reason is not None:
                await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _keyed_agent_route(scope: Scope) -> bool:
    """A request to one of :data:`AGENT_ROUTES` that presents a key."""
    if AGENT_ROUTES.fullmatch(scope.get("path", "")) is None:
        return False
    return any(name == b"authorization" for name, _ in scope.get("headers", ()))


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` is a 413, refused before
    anything reads it whole: by its ``Content-Length``, and while it streams in (chunked).

    FastAPI parses a JSON body, and validates it, before the route runs its own limits:
    100,000 heartbeats in 21 MB took 2.3 s of the event loop (every request waited) for a
    bridge that takes 1,000; a conversation payload of 500,000 keys, 4.5 s; without a key,
    the parse alone still ran (found by a review). OTLP's routes (``/v1/``) keep their own
    limit, ``AGENTWATCH_OTLP_MAX_BODY_BYTES``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...] = ("/v1/",)) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen, answered = 0, False

        async def counted() -> dict:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request" and not answered:
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # answered now; the app sees the client leave
                    answered = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_answered(message: dict) -> None:
            if not answered:
                await send(message)

        try:
            await self.app(scope, counted, unless_answered)
        except Exception:
            if not answered:
                raise

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = (
            f"the request body is over {self.max_bytes} bytes (AGENTWATCH_API_MAX_BODY_BYTES): "
            "send less at a time (the bridge takes 1,000 heartbeats a request)"
        )
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class InFlightLimit:
    """ASGI middleware: at most ``per_caller`` requests of one caller at once; more get a
    429 (``Retry-After: 1``). A caller is its address and the key id its Authorization
    header names (the key is checked later, by the route: a guess at someone's key id
    from another address does not take that caller's turns).

    Sync routes share one pool of 40 threads, status and assign included: one caller with
    40 slow reads in flight (a year's report, say) held them all (found by a review).
    """

    def __init__(self, app: ASGIApp, per_caller: int) -> None:
        self.app = app
        self.per_caller = per_caller
        self._in_flight: dict[tuple[str, str], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.per_caller <= 0:
            await self.app(scope, receive, send)
            return
        caller = _caller(scope)
        count = self._in_flight.get(caller, 0)
        if count >= self.per_caller:
            detail = (
                f"more than {self.per_caller} requests of this caller at once "
                "(AGENTWATCH_API_MAX_IN_FLIGHT_PER_CALLER): wait for an answer before the next"
            )
            answer = JSONResponse({"detail": detail}, status_code=429,
                                  headers={"Retry-After": "1"})  # fmt: skip
            await answer(scope, receive, send)
            return
        self._in_flight[caller] = count + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self._in_flight[caller] - 1
            if left:
                self._in_flight[caller] = left
            else:
                del self._in_flight[caller]


def _caller(scope: Scope) -> tuple[str, str]:
    """(the client's address, the key id its Authorization header names, or '')."""
    client = scope.get("client")
    header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
    scheme, _, token = header.decode("latin-1").partition(" ")
    parsed = parse_key(token.strip()) if scheme.lower() == "bearer" else None
    return (client[0] if client else "", parsed.key_id if parsed else "")
