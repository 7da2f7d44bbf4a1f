"""``daelab sweep``'s flags (being built: issue 22)."""
from __future__ import annotations

from pathlib import Path

from daelab.errors import UsageError


def add_parser(sub, formatter_class, summary: str) -> None:
    p = sub.add_parser("sweep", formatter_class=formatter_class, help=summary, description=summary)
    p.add_argument("spec", type=Path, metavar="SPEC", help="the sweep's TOML file")
    p.set_defaults(func=_run)


def _run(args) -> int:
    raise UsageError("daelab sweep is not built yet", "see issue 22")
