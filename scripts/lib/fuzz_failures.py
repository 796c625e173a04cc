#!/usr/bin/env python3
"""One line per schemathesis failure: operation, check, what was wrong, how to reproduce.

Reads the text output of `st run` (the FAILURES section) from the files given and prints a
Markdown table, so a run's findings can go straight into an issue or a report. Schema
violations are listed per schema location, so 25 nulls in one model show as 25 rows only
when they are 25 different fields.
"""

import re
import sys

OPERATION = re.compile(r"^_{3,} (?P<op>[A-Z]+ \S+) _{3,}$")
CHECK = re.compile(r"^- (?P<code>ST\d+) (?P<title>.+?)(?: \(\d+ violations?\))?$")
SCHEMA_AT = re.compile(r"^Schema at (?P<path>\S+?):?$")
RECEIVED = re.compile(r"^Received: (?P<status>\d+)")
STATUS_LINE = re.compile(r"^\[(?P<status>\d{3})\] ")


def failures(lines):
    """Yield (operation, check, detail, reproduce) for each failure in one output."""
    op = None
    current = None
    in_failures = False
    for raw in lines:
        line = raw.strip()
        if "FAILURES" in line and line.startswith("="):
            in_failures = True
            continue
        if not in_failures:
            continue
        if line.startswith("=") and "SUMMARY" in line:
            break
        if m := OPERATION.match(line):
            op = m["op"]
            continue
        if m := CHECK.match(line):
            if current:
                yield current
            current = {"op": op, "check": f"{m['code']} {m['title']}", "details": [], "curl": ""}
            continue
        if current is None:
            continue
        if m := SCHEMA_AT.match(line):
            current["details"].append(m["path"].replace("/components/schemas/", ""))
        elif m := RECEIVED.match(line):
            current["details"].append(f"got {m['status']}")
        elif (m := STATUS_LINE.match(line)) and not current["details"]:
            current["details"].append(f"answered {m['status']}")
        elif current["check"].startswith("ST1") and line.endswith("is not of type \"string\"") or (
            "is not of type" in line and not current["details"]
        ):
            current["details"].append(line)
        elif line.startswith("curl "):
            current["curl"] = line
            yield current
            current = None
    if current:
        yield current


def main(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            rows.extend(failures(f))
    seen = set()
    print("| operation | check | what | reproduce |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        details = []
        for detail in row["details"]:
            if detail not in details:
                details.append(detail)
        key = (row["op"], row["check"], tuple(details))
        if key in seen:
            continue
        seen.add(key)
        curl = row["curl"].replace("|", "\\|")
        what = "; ".join(details).replace("|", "\\|")
        print(f"| {row['op']} | {row['check']} | {what} | `{curl}` |")
    print(f"\n{len(seen)} distinct failures")


if __name__ == "__main__":
    main(sys.argv[1:])
