#!/usr/bin/env python3
"""The module import graph of each workspace crate, and the cycles in it.

    scripts/lib/import_graph.py [--check] [--max-lines N]

Reads every `*.rs` file under each crate's `src/`, maps it to its module path
(`api/src/routes/tasks/mod.rs` is `routes::tasks`), and draws an edge from a module to every
module it names through `crate::`, `super::` or `self::` paths (in `use` items and in
expressions alike). A module's own children and the crate root (`lib.rs`, which only
declares modules) do not count, nor do `#[cfg(test)]` modules at the end of a file. It prints
the strongly connected components with more than one module (import cycles) and the files
over the line budget; with `--check` it exits 1 when there is a cycle or an oversized file.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRATES = ["shared", "api", "worker", "testkit", "bench"]
PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    # Unit tests at the end of a file may reach anything in the crate.
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: cut.start()] if cut else text


def resolve(modules: set, base: tuple, kind: str, rest: list) -> tuple | None:
    if kind == "crate":
        path = []
    elif kind == "self":
        path = list(base)
    else:
        path = list(base[:-1])
        while rest and rest[0] == "super":
            path, rest = path[:-1], rest[1:]
    best = tuple(path) if tuple(path) in modules else None
    for name in rest:
        path.append(name)
        if tuple(path) in modules:
            best = tuple(path)
        else:
            break
    return best


def graph(crate: str):
    src = ROOT / crate / "src"
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    modules = set(files)
    edges = {m: set() for m in modules}
    for mod, file in files.items():
        text = strip(file.read_text())
        refs = []
        for m in USE_GROUP_RE.finditer(text):
            prefix = [p for p in m.group(2).split("::") if p]
            for item in re.split(r"[,{}\s]+", m.group(3)):
                item = item.split("::")[0].strip()
                if item and item not in ("self",):
                    refs.append((m.group(1), prefix + [item]))
                else:
                    refs.append((m.group(1), prefix))
        for m in PATH_RE.finditer(text):
            refs.append((m.group(1), [p for p in m.group(2).split("::") if p]))
        for kind, rest in refs:
            target = resolve(modules, mod, kind, rest)
            if target is None or target == () or target == mod:
                continue
            if target[: len(mod)] == mod:  # own descendant
                continue
            edges[mod].add(target)
    return files, edges


def sccs(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main() -> int:
    check = "--check" in sys.argv
    max_lines = 450
    if "--max-lines" in sys.argv:
        max_lines = int(sys.argv[sys.argv.index("--max-lines") + 1])
    bad = False
    for crate in CRATES:
        if not (ROOT / crate / "src").is_dir():
            continue
        files, edges = graph(crate)
        for comp in sccs(edges):
            bad = True
            names = sorted("::".join(m) or "(root)" for m in comp)
            print(f"{crate}: import cycle of {len(comp)} modules: {', '.join(names)}")
        for mod, file in sorted(files.items()):
            lines = sum(1 for _ in file.open())
            if lines > max_lines:
                bad = True
                print(f"{crate}: {file.relative_to(ROOT)} has {lines} lines (budget {max_lines})")
    if not bad:
        print("import graph: no cycles, no file over the budget")
    return 1 if bad and check else 0


if __name__ == "__main__":
    sys.exit(main())
