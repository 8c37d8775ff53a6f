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
    """

    def _display(self) -> str:
        dsn = self.get_secret_value()
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return MASK
        if parts.password is None:
            return dsn
        user, _, host = parts.netloc.rpartition("@")
        user = user.partition(":")[0]
        return parts._replace(netloc=f"{user}:{MASK}@{host}").geturl()

    def secret_parts(self) -> list[str]:
        """The strings to keep out of logs: the DSN and its password (raw and decoded)."""
        dsn = self.get_secret_value()
        try:
            password = urlsplit(dsn).password
        except ValueError:
            return [dsn]
        if not password:
            return []
        return _unique([dsn, password, unquote(password)])


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
