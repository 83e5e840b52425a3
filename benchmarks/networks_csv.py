"""Turn measured rows of `validate --out` files into a `calibrate --networks` table (issue 12).

    python benchmarks/networks_csv.py --out DIR/nets.csv [--every 10] [--group random|zoo] [--append] VALIDATE.json [...]

Takes every `--every`-th measured row of each file (the first, then every k-th after it): a timm
row becomes a `timm_name` row; an AutoViT subnet's architecture is written as an arch JSON file
into DIR/archs/ and named by a `path` relative to the table, as `calibrate --networks` wants it.
The rows left out are the held-out ones: re-price them with `benchmarks/cpu_rescore.py` after
`autovit-lat calibrate --hw local-cpu --lut LUT --networks DIR/nets.csv --out CAL.toml`.
Prints one JSON object: the table, and per file the models it took.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

COLUMNS = ["model", "latency_ms", "path", "timm_name"]


def table_rows(rows: list[dict], every: int, archs: Path, group: str | None = None) -> list[dict]:
    """The `--networks` rows of every `every`-th measured row (of `group`: random or zoo, else
    all); writes the arch JSON files."""
    out = []
    measured = [r for r in rows if r.get("measured_ms") and (group is None or r.get("group") == group)]
    for r in measured[::every]:
        model = str(r["model"])
        if model.startswith("timm:"):
            out.append({"model": model, "latency_ms": r["measured_ms"], "path": "", "timm_name": model[5:]})
        elif isinstance(r.get("arch"), dict):
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", model)[:100] + ".json"
            (archs / name).write_text(json.dumps(r["arch"]))
            out.append({"model": model, "latency_ms": r["measured_ms"], "path": f"archs/{name}", "timm_name": ""})
    return out


def main() -> None:
    from autovit.latmodel.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="`validate --out` JSON files")
    ap.add_argument("--out", required=True, help="the CSV to write (its folder gets archs/)")
    ap.add_argument("--every", type=int, default=10, help="take every k-th measured row of each file")
    ap.add_argument("--group", choices=("random", "zoo"), help="only the rows of this set (default: all)")
    ap.add_argument("--append", action="store_true", help="keep the rows the table already has")
    args = ap.parse_args()
    if not 1 <= args.every <= 10_000:
        sys.exit("error: --every must be between 1 and 10000")
    out = Path(args.out)
    archs = out.parent / "archs"
    archs.mkdir(parents=True, exist_ok=True)
    rows, taken = [], {}
    if args.append and out.exists():
        try:
            reader = csv.DictReader(io.StringIO(out.read_text()))
            rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            sys.exit(f"error: {out}: cannot read it to append ({type(e).__name__}); drop --append to write it anew")
        extra = set(reader.fieldnames or ()) - set(COLUMNS)
        if extra or any(None in r for r in rows):  # None: a row with more fields than the header
            # Rewriting the table without them would lose what they say (a resolution, a format).
            sys.exit(f"error: {out}: has columns this script does not write ({', '.join(sorted(extra))[:80]}); "
                     "append to a table of model, latency_ms, path, timm_name or write a new one")
    for f in args.files:
        try:
            d = json.loads(Path(f).read_text())
            file_rows = table_rows(d["rows"], args.every, archs, args.group)
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"error: {f}: not a `validate --out` file ({type(e).__name__}); pass the JSON that validate --out wrote")
        rows += file_rows
        taken[f] = [r["model"] for r in file_rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out, buf.getvalue())
    print(json.dumps({"table": str(out), "rows": len(rows), "taken": taken}, indent=1))


if __name__ == "__main__":
    main()
