"""Print the model-family support table of docs/models.md, or with --write put it into the file.

The table comes from tests/model_families.py, the matrix that tests/test_model_families.py asserts; a test checks
that the committed docs/models.md holds exactly this table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "models.md"
START, END = "<!-- support-table:start -->\n", "<!-- support-table:end -->\n"


def docs_with_table(text: str, table: str) -> str:
    """``text`` with what lies between the table's markers replaced by ``table``."""
    before, found, rest = text.partition(START)
    if not found or END not in rest:
        raise SystemExit(f"{DOCS}: no {START.strip()} ... {END.strip()} markers")
    return before + START + table + END + rest.partition(END)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/models.md in place")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from model_families import support_table  # tests/ is not a package: on the path only for this script

    table = support_table()
    if args.write:
        DOCS.write_text(docs_with_table(DOCS.read_text(), table))
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
