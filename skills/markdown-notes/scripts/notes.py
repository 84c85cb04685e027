#!/usr/bin/env python3
"""Markdown notes: add, list, search, show and index notes in ./notes.

Standard library only; safe to run in agentd's sandbox (writes only under
the notes directory)."""

import argparse
import datetime
import os
import re
import sys

TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENTRY = re.compile(r"^## (\d{4}-\d{2}-\d{2}) (.*)$")


def fail(msg):
    print(f"notes: {msg}", file=sys.stderr)
    sys.exit(2)


def topic_path(d, topic):
    if not TOPIC.match(topic):
        fail(f"invalid topic {topic!r}: use letters, digits, '-' and '_' (at most 64)")
    return os.path.join(d, topic + ".md")


def topics(d):
    if not os.path.isdir(d):
        return []
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".md") and f != "INDEX.md")


def entries(path):
    """(date, title, body) for each entry of a topic file."""
    out, cur = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = ENTRY.match(line.rstrip("\n"))
            if m:
                cur = [m.group(1), m.group(2), []]
                out.append(cur)
            elif cur is not None:
                cur[2].append(line)
    return [(d, t, "".join(b).strip()) for d, t, b in out]


def cmd_add(a):
    text = sys.stdin.read() if a.text == "-" else a.text
    title = " ".join(a.title.split())
    if not title:
        fail("the title is empty")
    os.makedirs(a.dir, exist_ok=True)
    path = topic_path(a.dir, a.topic)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    new = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(f"# {a.topic}\n")
        f.write(f"\n## {today} {title}\n\n{text.strip()}\n")
    write_index(a.dir)
    print(f"added to {path}: {title}")


def cmd_list(a):
    if a.topic:
        path = topic_path(a.dir, a.topic)
        if not os.path.exists(path):
            fail(f"no topic {a.topic!r}; topics: {', '.join(topics(a.dir)) or '(none)'}")
        for date, title, _ in entries(path):
            print(f"{date} {title}")
    else:
        for t in topics(a.dir):
            print(f"{t} ({len(entries(topic_path(a.dir, t)))} entries)")


def cmd_search(a):
    words = [w.lower() for w in a.words]
    hits = 0
    for t in topics(a.dir):
        for date, title, body in entries(topic_path(a.dir, t)):
            hay = (title + "\n" + body).lower()
            if all(w in hay for w in words):
                hits += 1
                first = body.splitlines()[0] if body else ""
                print(f"{t}: {date} {title}" + (f" -- {first}" if first else ""))
    if hits == 0:
        print("no matches")


def cmd_show(a):
    path = topic_path(a.dir, a.topic)
    if not os.path.exists(path):
        fail(f"no topic {a.topic!r}")
    with open(path, encoding="utf-8") as f:
        sys.stdout.write(f.read())


def write_index(d):
    lines = ["# Notes index", ""]
    for t in topics(d):
        lines.append(f"- [{t}]({t}.md)")
        for date, title, _ in entries(topic_path(d, t)):
            lines.append(f"  - {date} {title}")
    tmp = os.path.join(d, ".INDEX.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(d, "INDEX.md"))


def cmd_index(a):
    os.makedirs(a.dir, exist_ok=True)
    write_index(a.dir)
    print(f"wrote {os.path.join(a.dir, 'INDEX.md')}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="notes.py", description=__doc__)
    p.add_argument("--dir", default="notes", help="notes directory (default ./notes)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("add")
    s.add_argument("topic")
    s.add_argument("title")
    s.add_argument("text", help="the note, or - to read it from stdin")
    s.set_defaults(func=cmd_add)
    s = sub.add_parser("list")
    s.add_argument("topic", nargs="?")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("search")
    s.add_argument("words", nargs="+")
    s.set_defaults(func=cmd_search)
    s = sub.add_parser("show")
    s.add_argument("topic")
    s.set_defaults(func=cmd_show)
    s = sub.add_parser("index")
    s.set_defaults(func=cmd_index)
    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
