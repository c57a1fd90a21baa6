"""Check the documentation's relative links: every link in README.md, docs/*.md and slicer/README.md that is
not a web address must point to an existing file, and a `#fragment` into a Markdown page to one of its headings
(GitHub's anchors: lower case, punctuation dropped, spaces as hyphens).

    python scripts/check_links.py        # prints each broken link; exit status 1 if there is one
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/*.md", "slicer/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings."""
    found: set[str] = set()
    in_code = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        base, n = slug, 1
        while slug in found:
            slug, n = f"{base}-{n}", n + 1
        found.add(slug)
    return found


def links(page: Path) -> list[str]:
    """The link targets of a page, code blocks left out."""
    targets: list[str] = []
    in_code = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            targets += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return targets


def broken(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.relative_to(REPO)}: {target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            problems.append(f"{page.relative_to(REPO)}: {target} (no heading #{fragment})")
    return problems


def main() -> int:
    pages = sorted({p for pattern in PAGES for p in REPO.glob(pattern)})
    problems = [problem for page in pages for problem in broken(page)]
    for problem in problems:
        print(problem)
    print(f"{len(pages)} pages, {sum(len(links(p)) for p in pages)} links, {len(problems)} broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
