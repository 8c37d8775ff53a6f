"""docs/sql.md's worked queries, each run on eight hours of simulator data in chDB.

The data: a small simulated fleet (two tenants, incidents of every kind) through a real
dataflow shard, in process, and into the tables the way the loader writes them
(tests/simulated_fleet.py). Each ```sql block of the guide's "Worked queries"
section must pass the SQL sandbox's policy (analysts run them through it) and return rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.sql import SqlSandbox
from tests.simulated_fleet import fleet_sandbox

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
DB = "guide"


def worked_queries() -> list[tuple[str, str]]:
    """(title, SQL) of every query of the guide's "Worked queries" section."""
    text = GUIDE.read_text()
    section = text[text.index("## Worked queries") :]
    found = re.findall(r"^### (.+?)\n.*?```sql\n(.*?)```", section, re.S | re.M)
    return [(title.strip(), sql.strip()) for title, sql in found]


@pytest.fixture(scope="module")
def guide_db(chdb_dir: Path) -> Iterator[SqlSandbox]:
    # the session's chDB directory: a process holds one, and a test elsewhere may still hold it
    yield from fleet_sandbox(chdb_dir, DB)


def test_the_guide_has_a_dozen_worked_queries() -> None:
    assert len(worked_queries()) >= 12


@pytest.mark.parametrize(("title", "sql"), worked_queries(), ids=[t for t, _ in worked_queries()])
def test_a_worked_query_passes_the_sandbox_and_returns_rows(guide_db: SqlSandbox, title, sql):
    assert guide_db.run(sql).rows, f"{title}: no rows"
