"""The one log line format of agentwatch's processes (the API, ``agentwatch`` commands):
``ts=… level=… logger=… msg="…"``, one event per line, easy to grep and to parse.

A message cannot break its line or forge another: backslashes and quotes are escaped, a
line break is ``\\n``, and every other control character (C0, DEL, NEL, the Unicode line
and paragraph separators) is ``\\xNN`` / ``\\uNNNN``. Messages carry what callers sent
(an actor's name, an agent id), so a raw line break in one could write a second, forged
event into the log.

>>> record = logging.LogRecord("api", logging.INFO, "", 1, "loader_stopped s=%d", (2,), None)
>>> record.created = 0.0
>>> KeyValueFormatter().format(record)
'ts=1970-01-01T00:00:00.000Z level=info logger=api msg="loader_stopped s=2"'
>>> record.msg, record.args = 'actor=ops\\nts=2099 level=error msg="forged"\\x1b', ()
>>> KeyValueFormatter().format(record).split(" logger=api ")[1]
'msg="actor=ops\\\\nts=2099 level=error msg=\\\\"forged\\\\"\\\\x1b"'
"""

from __future__ import annotations

import logging
import re
import time

_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` escaped to stay on one line of the log, inside double quotes."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return _CONTROL.sub(lambda m: _escaped(m.group()), text)


def _escaped(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… logger=… msg="…"`` (the module's doc), with the traceback, if any,
    in ``exc="…"`` on the same line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.created * 1000) % 1000
        line = (
            f"ts={stamp}.{millis:03d}Z level={record.levelname.lower()} "
            f'logger={record.name} msg="{one_line(record.getMessage())}"'
        )
        if record.exc_info:  # exc_text: the traceback already formatted (and redacted)
            error = record.exc_text or self.formatException(record.exc_info)
            line += f' exc="{one_line(error)}"'
        return line


class OneLineMessages(logging.Filter):
    """Keeps each message of a handler on its line (for the processes that log in their
    own shape, ``%(message)s`` unquoted: the dataflow, the loader): its control characters
    as in :func:`one_line`, quotes and backslashes left as they are. An agent id or an
    actor with a line break in it cannot write a second, forged event.

    >>> record = logging.LogRecord("x", logging.INFO, "", 1, "agent=%s", ("a\\nlevel=ERROR",), None)
    >>> OneLineMessages().filter(record), record.getMessage()
    (True, 'agent=a\\\\nlevel=ERROR')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg, record.args = _CONTROL.sub(lambda m: _escaped(m.group()), message), ()
        return True
