#!/usr/bin/env python3
"""Summarise a CSV or JSON data file: rows, and per column the type,
missing values, numeric statistics and the most common values."""

import argparse
import collections
import csv
import io
import json
import math
import os
import statistics
import sys


def fail(msg):
    print(f"summarize: {msg}", file=sys.stderr)
    sys.exit(2)


def load_csv(text, delimiter=None):
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    rows = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
    return rows


def load_json(text):
    data = json.loads(text)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            fail("the JSON object must hold exactly one list of records")
        data = lists[0]
    if not isinstance(data, list):
        fail("expected a JSON list of objects")
    return [r if isinstance(r, dict) else {"value": r} for r in data]


def load_jsonl(text):
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"line {n}: {e}")
            rows.append(r if isinstance(r, dict) else {"value": r})
    return rows


def as_number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        s = v.strip()
        try:
            f = float(s)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def is_missing(v):
    return v is None or (isinstance(v, str) and v.strip() == "")


def summarize(rows, top):
    columns = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    out = {"rows": len(rows), "columns": []}
    for c in columns:
        values = [r.get(c) for r in rows]
        present = [v for v in values if not is_missing(v)]
        nums = [as_number(v) for v in present]
        col = {"name": c, "missing": len(values) - len(present)}
        if present and all(n is not None for n in nums):
            col["type"] = "integer" if all(n == int(n) for n in nums) else "number"
            col["min"] = min(nums)
            col["max"] = max(nums)
            col["mean"] = statistics.fmean(nums)
            col["median"] = statistics.median(nums)
            if len(nums) > 1:
                col["stdev"] = statistics.stdev(nums)
        else:
            col["type"] = "boolean" if present and all(isinstance(v, bool) for v in present) else "text"
        texts = [v if isinstance(v, str) else json.dumps(v) for v in present]
        counts = collections.Counter(texts)
        col["distinct"] = len(counts)
        col["top"] = [[v, n] for v, n in counts.most_common(top)]
        out["columns"].append(col)
    return out


def fmt(x):
    if isinstance(x, float):
        return str(int(x)) if x == int(x) and abs(x) < 1e15 else f"{x:.4g}"
    return str(x)


def render(s, path):
    lines = [f"{path}: {s['rows']} rows, {len(s['columns'])} columns"]
    for c in s["columns"]:
        lines.append(f"\n{c['name']} ({c['type']}), missing {c['missing']}, distinct {c['distinct']}")
        if "mean" in c:
            stats = f"  min {fmt(c['min'])}  max {fmt(c['max'])}  mean {fmt(c['mean'])}  median {fmt(c['median'])}"
            if "stdev" in c:
                stats += f"  stdev {fmt(c['stdev'])}"
            lines.append(stats)
        if c["top"]:
            lines.append("  top: " + ", ".join(f"{v!r} x{n}" for v, n in c["top"]))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="summarize.py", description=__doc__)
    p.add_argument("file")
    p.add_argument("--format", choices=["csv", "tsv", "json", "jsonl"])
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--top", type=int, default=3, help="most common values to show (default 3)")
    a = p.parse_args(argv)
    fmt_name = a.format or os.path.splitext(a.file)[1].lstrip(".").lower()
    try:
        with open(a.file, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except OSError as e:
        fail(str(e))
    if fmt_name == "csv":
        rows = load_csv(text)
    elif fmt_name == "tsv":
        rows = load_csv(text, "\t")
    elif fmt_name == "json":
        try:
            rows = load_json(text)
        except json.JSONDecodeError as e:
            fail(f"invalid JSON: {e}")
    elif fmt_name == "jsonl":
        rows = load_jsonl(text)
    else:
        fail(f"unknown format {fmt_name!r}: use --format csv|tsv|json|jsonl")
    s = summarize(rows, max(a.top, 0))
    print(json.dumps(s, indent=2) if a.json else render(s, a.file))


if __name__ == "__main__":
    main()
