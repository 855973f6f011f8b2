"""Write docs/settings.md from the settings' metadata, or check that it is up to date.

Every setting's description lives once, in its field's metadata in `napari_cosdd.engine.config`; the
command line's ``--help``, the Train widget's form and tooltips, and this page are made from it.

Usage::

    python scripts/make_settings_doc.py           # rewrite docs/settings.md
    python scripts/make_settings_doc.py --check   # exit 1 if the page differs from the metadata
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_cosdd.engine.config import settings_markdown

PAGE = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
HEADER = """# Settings

Every training and model setting, with its default and meaning. The same text is the tooltip in the
Train widget's Advanced section and the help of `napari-cosdd train --help`; in Python the settings are
the fields of `TrainConfig` and `ModelConfig` (`napari_cosdd.engine.config`). This page is generated
by `python scripts/make_settings_doc.py` from the fields' metadata: edit the metadata, not this page.

"""


def page() -> str:
    return HEADER + settings_markdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/settings.md is out of date")
    args = parser.parse_args(argv)
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        if current != page():
            print(f"{PAGE} is out of date: run python scripts/make_settings_doc.py", file=sys.stderr)
            return 1
        print(f"{PAGE} is up to date")
        return 0
    PAGE.write_text(page(), encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
