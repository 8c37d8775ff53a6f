"""Secrets in settings: values the code uses and never shows.

A DSN with a password and a webhook URL (a Slack webhook URL *is* the
credential) are settings like any other, but ``repr(settings)``, a log line or
an error message must not print them. Two pydantic secret types hold them:
their ``str``/``repr`` show a masked form, ``.get_secret_value()`` the real one.

>>> SecretDsn("http://agentwatch:s3cret-pw@clickhouse:8123")
SecretDsn('http://agentwatch:***@clickhouse:8123')
>>> str(SecretUrl("slack:https://hooks.slack.com/services/T0/B0/xoxb123"))
'slack:https://hooks.slack.com/***'

Third parties can still put a secret in a message (an HTTP client's exception
that quotes the URL it called): :func:`redact` replaces every known secret in a
text, and :class:`RedactSecrets` does it to every record a logging handler
writes, traceback included. The known secrets of a configuration are
``Settings.secret_values()``.

>>> redact("POST https://hooks.slack.com/services/T0/B0/xoxb123 failed",
...        ["https://hooks.slack.com/services/T0/B0/xoxb123"])
'POST *** failed'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from pydantic import Secret

#: What a secret is replaced with.
MASK = "***"
#: Shorter secret values are not searched for in text: they would match all over the
#: logs (a password this short protects little anyway).
MIN_SECRET_CHARS = 4
#: A URL's path and query count as secret (on their own) from this length: long enough
#: for a token (``/services/T0/B0/xoxb…``), short paths (``/hook``) are not searched for.
MIN_SECRET_PATH_CHARS = 12

#: Prefix of a webhook URL that wants Slack's layout (kept visible: it is no secret).
SLACK_PREFIX = "slack:"


def _split_prefix(text: str) -> tuple[str, str]:
    """(``slack:`` or ``""``, the URL)."""
    if text.startswith(SLACK_PREFIX):
        return SLACK_PREFIX, text.removeprefix(SLACK_PREFIX)
    return "", text


def _host_part(netloc: str) -> str:
    """``user:pw@host:port`` → ``host:port``."""
    return netloc.rpartition("@")[2]


class SecretDsn(Secret[str]):
    """A database DSN whose password is a secret; shown with the password as ``***``.

    >>> SecretDsn("chdb://var/clickhouse")  # no password: shown whole
    SecretDsn('chdb://var/clickhouse')
    >>> dsn = SecretDsn("https://reader:pa%40ss@ch.internal:8443/agentwatch")
    >>> str(dsn), dsn.get_secret_value()
    ('https://reader:***@ch.internal:8443/agentwatch', 'https://reader:pa%40ss@ch.internal:8443/agentwatch')
    >>> dsn.secret_parts()
    ['https://reader:pa%40ss@ch.internal:8443/agentwatch', 'pa%40ss', 'pa@ss']

    Read leniently, as a secret must be: a password with an unescaped ``/``, ``?`` or
    ``#`` (base64 makes them) ends a URL's host part early, so the user part runs to the
    last ``@``; and a credential in the query (``?access_token=…``, which
    clickhouse-connect takes) is masked too.

    >>> dsn = SecretDsn("http://reader:ab/c?d@127.0.0.1:8123/db?access_token=t0k3n&x=1")
    >>> str(dsn)
    'http://reader:***@127.0.0.1:8123/db?access_token=***&x=1'
    >>> dsn.secret_parts()[1:]
    ['ab/c?d', 't0k3n']
    """

    def _display(self) -> str:
        scheme, user, password, rest = _dsn_parts(self.get_secret_value())
        if password is None and not _credential_values(rest):
            return self.get_secret_value()
        shown = f"{scheme}://" if scheme else ""
        if password is not None:
            shown += f"{user}:{MASK}@"
        elif user:
            shown += f"{user}@"
        for value in _credential_values(rest):
            rest = rest.replace(f"={value}", f"={MASK}")
        return shown + rest

    def secret_parts(self) -> list[str]:
        """The strings to keep out of logs: the DSN, its password and the credentials of
        its query (raw and decoded)."""
        dsn = self.get_secret_value()
        _, _, password, rest = _dsn_parts(dsn)
        found = ([password] if password else []) + _credential_values(rest)
        if not found:
            return []
        return _unique([dsn, *(v for secret in found for v in (secret, unquote(secret)))])


#: Query parameters of a DSN whose values are credentials (a name containing one of these).
_CREDENTIAL_NAMES = ("password", "passwd", "token", "secret", "key")


def _dsn_parts(dsn: str) -> tuple[str, str, str | None, str]:
    """(scheme, user, password or None, host and the rest) of a DSN, the user part
    running to the last ``@`` (not to the first ``/``).

    >>> _dsn_parts("http://u:p/w@127.0.0.1:1?compress=false")
    ('http', 'u', 'p/w', '127.0.0.1:1?compress=false')
    """
    scheme, separator, rest = dsn.partition("://")
    if not separator or "@" not in rest:
        return scheme if separator else "", "", None, rest if separator else dsn
    # (an @ in the query would read as a user part too: masking too much, never too little)
    userinfo, _, after = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return scheme, user, password if colon else None, after


def _credential_values(rest: str) -> list[str]:
    """The values of the query parameters that are credentials (``access_token`` …)."""
    query = rest.partition("?")[2].partition("#")[0]
    values = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and value and any(c in name.lower() for c in _CREDENTIAL_NAMES):
            values.append(value)
    return values


class SecretUrl(Secret[str]):
    """A URL that is itself a credential (a webhook); shown as scheme, host and ``/***``.

    A ``slack:`` prefix stays visible.

    >>> SecretUrl("http://127.0.0.1:9000/hook")
    SecretUrl('http://127.0.0.1:9000/***')
    >>> url = SecretUrl("slack:https://hooks.slack.com/services/T0/B0/xoxb123?x=1")
    >>> url.secret_parts()  # doctest: +NORMALIZE_WHITESPACE
    ['slack:https://hooks.slack.com/services/T0/B0/xoxb123?x=1',
     'https://hooks.slack.com/services/T0/B0/xoxb123?x=1', '/services/T0/B0/xoxb123?x=1']
    """

    def _display(self) -> str:
        prefix, url = _split_prefix(self.get_secret_value())
        try:
            parts = urlsplit(url)
        except ValueError:
            return prefix + MASK
        if not parts.scheme or not parts.netloc:
            return prefix + MASK
        userinfo = f"{MASK}@" if "@" in parts.netloc else ""
        hidden = parts.path not in ("", "/") or parts.query or parts.fragment
        return f"{prefix}{parts.scheme}://{userinfo}{_host_part(parts.netloc)}" + (
            f"/{MASK}" if hidden else ""
        )

    def secret_parts(self) -> list[str]:
        """The strings to keep out of logs: the URL (with and without prefix), its password,
        and its path with query when long enough to be a token."""
        text = self.get_secret_value()
        _, url = _split_prefix(text)
        found = [text, url]
        try:
            parts = urlsplit(url)
        except ValueError:
            return _unique(found)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(tail) >= MIN_SECRET_PATH_CHARS:
            found.append(tail)
        return _unique(found)

    def label(self, index: int) -> str:
        """How logs name this URL: its position in the list and what :meth:`_display` shows.

        >>> SecretUrl("http://127.0.0.1:9000/hook?token=abc").label(1)
        '#1 http://127.0.0.1:9000/***'
        """
        return f"#{index} {self._display()}"


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        if value:
            seen.setdefault(value, None)
    return list(seen)


def secret_strings(value: object) -> list[str]:
    """Every secret held by ``value`` (a secret, or lists and dicts of them), longest first.

    >>> secret_strings({"a": [SecretDsn("http://u:longpassword@h:1")], "b": 3})
    ['http://u:longpassword@h:1', 'longpassword']
    """
    found: list[str] = []
    if hasattr(value, "get_secret_value"):  # pydantic's SecretStr, Secret[...], and ours
        parts = getattr(value, "secret_parts", None)
        found += parts() if parts is not None else [str(value.get_secret_value())]
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            found += secret_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            found += secret_strings(item)
    return sorted((s for s in _unique(found) if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True)


def reveal(value: object) -> object:
    """``value`` with every secret in it replaced by its real value (for a child's env).

    >>> reveal([SecretUrl("http://h/x"), 2])
    ['http://h/x', 2]
    """
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    if isinstance(value, list | tuple):
        return [reveal(item) for item in value]
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    return value


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***`` (longest first).

    >>> redact("http://u:hunter22@h failed: hunter22", ["http://u:hunter22@h", "hunter22"])
    '*** failed: ***'
    """
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    """A logging filter for handlers: removes known secrets from each record it passes.

    The message is formatted once and redacted; a traceback is formatted and
    redacted into ``record.exc_text``, which formatters print instead of
    formatting ``exc_info`` again. Put it on every handler (a filter on a logger
    does not see the records of its child loggers).

    >>> record = logging.LogRecord("x", logging.ERROR, "", 0, "url=%s", ("http://h/t0k",), None)
    >>> RedactSecrets(["http://h/t0k"]).filter(record), record.getMessage()
    (True, 'url=***')
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted(_unique(secrets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let the handler report it as logging does
            return True
        redacted = redact(message, self.secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def redact_handlers(handlers: Iterable[logging.Handler], secrets: Iterable[str]) -> None:
    """Put one :class:`RedactSecrets` for ``secrets`` on each handler."""
    redactor = RedactSecrets(secrets)
    for handler in handlers:
        handler.addFilter(redactor)
