"""Regenerate the README's flag table from the config dataclasses.

    python scripts/sync_readme_flags.py          # rewrite README.md in place
    python scripts/sync_readme_flags.py --check  # exit 1 if README is stale
"""

import sys
from pathlib import Path

from fairseq_taskmoe.config import flag_table_markdown

BEGIN, END = "<!-- moe-flags:begin -->", "<!-- moe-flags:end -->"


def render(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{flag_table_markdown()}\n{END}{tail}"


def main():
    path = Path(__file__).resolve().parents[1] / "README.md"
    text = path.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            sys.exit("README.md flag table is stale: run python scripts/sync_readme_flags.py")
        return
    path.write_text(new)


if __name__ == "__main__":
    main()
