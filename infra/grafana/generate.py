"""Write the dashboards' JSON (``python -m infra.grafana``), or check the committed files
are what the code makes (``python -m infra.grafana --check``, also run by the tests)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import RowPanel

from infra.grafana.dashboards import DASHBOARDS

#: Where the generated files live (and where provisioning/dashboards/agentwatch.yml says
#: Grafana finds them, once mounted).
OUTPUT = Path(__file__).resolve().parent / "dashboards"


def render(name: str) -> str:
    """The JSON of dashboard file ``name`` (a key of :data:`DASHBOARDS`): panels numbered
    1, 2, … in order (Grafana wants an id per panel), keys sorted, so a change of the code
    is a readable diff of the file."""
    dashboard = DASHBOARDS[name]().build()
    for number, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = number
        if isinstance(panel, RowPanel):
            panel.collapsed = False
    return json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def stale(directory: Path = OUTPUT) -> list[str]:
    """The dashboard files in ``directory`` that differ from what the code makes now (or
    are missing), and files there that the code does not make."""
    wrong = [name for name in DASHBOARDS if _read(directory / name) != render(name)]
    extra = sorted(p.name for p in directory.glob("*.json") if p.name not in DASHBOARDS)
    return wrong + extra


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def write(directory: Path = OUTPUT) -> list[Path]:
    """Write every dashboard's JSON into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = directory / name
        path.write_text(render(name))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.grafana",
        description="Generate agentwatch's Grafana dashboards (infra/grafana/dashboards/).",
    )
    parser.add_argument("--out", type=Path, default=OUTPUT, help="directory to write to")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files there are not what the code makes",
    )
    args = parser.parse_args(argv)
    if args.check:
        wrong = stale(args.out)
        for name in wrong:
            print(f"{args.out / name}: not what infra/grafana makes; run python -m infra.grafana")
        return 1 if wrong else 0
    for path in write(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
