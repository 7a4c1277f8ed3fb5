"""The documents say what the code does: each setting has one row in docs/operations.md."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from sentistream.worker.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_setting_has_exactly_one_row_in_the_operations_table() -> None:
    section = (DOCS / "operations.md").read_text().split("## Every setting", 1)[1].split("\n## ", 1)[0]
    named = Counter(name for row in section.splitlines() if row.startswith("| `")
                    for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1]))
    assert sorted(n for n, count in named.items() if count > 1) == []
    assert sorted(set(Settings.model_fields) - named.keys()) == [], "settings without a row"
    assert sorted(named.keys() - set(Settings.model_fields)) == [], "rows for settings that do not exist"
