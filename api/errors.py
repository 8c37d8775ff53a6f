"""The API's one error contract: the bodies of its error answers, and how routes
declare them.

Every 422 is :class:`ValidationErrorBody` (one readable sentence, and FastAPI's list
of where each problem is); every other error is :class:`ErrorMessage` (``detail``: what
was wrong and what to do). A route declares every status it may answer with
:func:`error_responses`, so its OpenAPI schema tells the truth (the contract test
checks it with Schemathesis).
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field


class ErrorMessage(BaseModel):
    """The body of every error answer but 422: ``detail`` says what was wrong and what to do."""

    detail: str = Field(description="What was wrong, and what to do about it.")


class ValidationErrorBody(BaseModel):
    """The body of every 422 answer: one readable sentence, and where each problem is."""

    message: str = Field(description="Every problem in one sentence: where, and what.")
    detail: list[dict] = Field(
        description="One entry per problem (FastAPI's form): type, loc (where: body, query, "
        "path or header, then the field), msg (what), input."
    )


#: What each error status of the API means (the descriptions in the OpenAPI schema).
ERROR_STATUSES = {
    400: "The query cannot run as asked (SQL: not parsed, or it hit a limit).",
    401: "No API key, or a key that is unknown, revoked or expired ('Authorization: Bearer aw_…').",
    403: "Refused: the key's role or tenant does not allow it, a change from another machine "
    "(changes are loopback-only unless allowed), or a query the SQL policy does not allow.",
    404: "No such agent, rule or silence.",
    409: "Conflicts with the current state: the rule exists, or the change needs ?confirm=true.",
    422: "The request does not fit the schema, or the rules the schema cannot state "
    "(one field against another): `message` says where and what.",
    429: "Too many queries run already; retry after Retry-After seconds.",
    503: "ClickHouse or the broker did not answer; nothing was changed, retry.",
    504: "The query took longer than its time limit.",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """The ``responses=`` of a route that may answer ``statuses``: a 422 with
    :class:`ValidationErrorBody`, the others with :class:`ErrorMessage`.

    >>> sorted(error_responses(404, 422))
    [404, 422]
    >>> error_responses(422)[422]["model"].__name__
    'ValidationErrorBody'
    """
    return {
        status: {
            "model": ValidationErrorBody if status == 422 else ErrorMessage,
            "description": ERROR_STATUSES[status],
        }
        for status in statuses
    }


def unprocessable(message: str, *loc: str | int) -> RequestValidationError:
    """A 422 for a rule the schema cannot state, in the same form as every other 422.

    >>> unprocessable("since is after until", "query", "since").errors()[0]["loc"]
    ('query', 'since')
    """
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message}])
