"""`repro report`: regenerate the results tables and figures from run folders."""
from __future__ import annotations

import argparse

from .build import DEFAULT_TITLE, build_report
from .tables import BASES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand."""
    p = subparsers.add_parser(
        "report", help="regenerate Markdown/CSV tables and PNG figures from run folders",
        description="Regenerate the results (Markdown and CSV tables, PNG figures) from run folders only: "
                    "every number comes from their summary.json/metrics.jsonl or from the published numbers "
                    "shipped in repro/published/. Writes OUT/report.md, OUT/tables/ and OUT/figures/.")
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                   help="run folders, or folders holding run folders (searched recursively for summary.json)")
    p.add_argument("--out", default="results", metavar="DIR", help="where to write the report (default: results)")
    p.add_argument("--title", default=DEFAULT_TITLE, help="title of report.md")
    p.add_argument("--basis", choices=BASES, default="last",
                   help="which accuracy of each run to report: the final model (last, default) or the best "
                        "evaluation during training (best)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Build the report and print where it went."""
    from ..paths import ensure_writable_dir
    ensure_writable_dir(args.out, "the report folder (--out)")  # before any run is read
    written = build_report(args.runs, args.out, title=args.title, basis=args.basis)
    print(written["paper_vs_reproduction_md"].read_text())
    print(f"report: {written['report']}")
    for key, path in sorted(written.items()):
        if key != "report":
            print(f"  {key}: {path}")
    return 0
