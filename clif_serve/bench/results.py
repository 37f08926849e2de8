"""Where a benchmark script's results go: `<stem>.json` (the whole report) and `<stem>.md` beside it."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(report: dict, markdown: str, folder: str | Path, stem: str, indent: int = 2) -> tuple[Path, Path]:
    """Write `report` as `<folder>/<stem>.json` (indented by `indent`) and `markdown` as `<folder>/<stem>.md`;
    return both paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=indent))
    markdown_path.write_text(markdown)
    return json_path, markdown_path
