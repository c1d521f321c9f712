#!/usr/bin/env python3
"""Writes the error-code tables of docs/troubleshooting.md from include/yutu/error.hpp and src/error.cpp.

The enums give names and numbers (and any trailing comment); the categories' message() switch gives
the text a user sees. `--check FILE` exits non-zero if FILE's tables differ from what the sources say
(scripts/test.sh runs it); `--write FILE` rewrites them in place; without options it prints them.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- error tables: begin (scripts/error_table.py --write) -->", "<!-- error tables: end -->"


def enum_entries(header: str, enum: str):
    body = re.search(r"enum class %s : int \{(.*?)\n\};" % enum, header, re.S).group(1)
    entries = [(m.group(1), int(m.group(2)), (m.group(3) or "").strip())
               for m in re.finditer(r"^\s*(\w+)\s*=\s*(-?\d+),[ \t]*(?://\s*(.*))?$", body, re.M)]
    # Refuse to drop an enumerator written in a shape the pattern above does not know.
    if len(entries) != body.count("="):
        sys.exit(f"error_table.py: could not read every enumerator of {enum} in error.hpp")
    return entries


def messages(source: str, enum: str):
    return {m.group(1): m.group(2)
            for m in re.finditer(r'case %s::(\w+): return "([^"]*)";' % enum, source)}


def tables() -> str:
    header = (ROOT / "include/yutu/error.hpp").read_text()
    source = (ROOT / "src/error.cpp").read_text()
    out = []
    for enum, category, title in (("errc", "yutu.store", "Store codes (`yutu::errc`)"),
                                  ("te_errc", "yutu.transfer", "Transfer engine codes (`yutu::te_errc`)")):
        msgs = messages(source, enum)
        out.append(f"### {title}, category `{category}`\n")
        out.append("| code | name | message | note |")
        out.append("| ---: | --- | --- | --- |")
        for name, value, note in enum_entries(header, enum):
            out.append(f"| {value} | `{name}` | {msgs.get(name, '')} | {note} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def splice(doc: str) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + tables() + doc[end:]


def main(argv):
    if len(argv) == 3 and argv[1] in ("--check", "--write"):
        path = pathlib.Path(argv[2])
        doc = path.read_text()
        new = splice(doc)
        if argv[1] == "--write":
            path.write_text(new)
            return 0
        if new != doc:
            print(f"{path}: error tables are out of date; run scripts/error_table.py --write {path}")
            return 1
        return 0
    sys.stdout.write(tables())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
