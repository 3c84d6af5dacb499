#!/usr/bin/env python3
"""Content key of a Dockerfile build: the Dockerfile, .dockerignore and every file its COPY/ADD
instructions take from the build context (after .dockerignore, as Docker and buildah see them),
plus any extra strings (the base image's key, a recipe version).

    context_key.py CONTEXT DOCKERFILE [EXTRA...]   ->  64 hex digits on stdout

Only reads files: a no-change `make images` stays a matter of hashing a few hundred files.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shlex
import sys


def _instructions(text: str):
    """Logical Dockerfile lines (continuations joined, comments dropped)."""
    buf = ""
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        yield buf + s
        buf = ""
    if buf:
        yield buf


def copy_sources(dockerfile_text: str) -> list[str]:
    sources = []
    for ins in _instructions(dockerfile_text):
        word, _, rest = ins.partition(" ")
        if word.upper() not in ("COPY", "ADD"):
            continue
        rest = rest.strip()
        flags = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if any(f.startswith("--from") for f in flags):
            continue  # from another stage or image, not the context
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        sources += args[:-1]
    return sources


def _pattern_re(p: str) -> re.Pattern:
    out, i = "", 0
    while i < len(p):
        c = p[i]
        if p.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if p.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(out + "$")


def ignore_rules(context: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    path = os.path.join(context, ".dockerignore")
    if os.path.exists(path):
        for line in open(path):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            neg = s.startswith("!")
            s = os.path.normpath(s.lstrip("!").strip()).lstrip("/")
            rules.append((neg, _pattern_re(s)))
    return rules


def ignored(rel: str, rules) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for neg, rx in rules:
        if any(rx.match(p) for p in prefixes):
            result = not neg
    return result


def context_files(context: str, sources: list[str], rules) -> list[str]:
    files: set[str] = set()
    for src in sources:
        matches = glob.glob(os.path.join(context, src.lstrip("/"))) or [os.path.join(context, src)]
        for m in matches:
            if not os.path.exists(m):
                raise SystemExit(f"context_key.py: COPY source {src!r} not found in {context}")
            if os.path.isdir(m) and not os.path.islink(m):
                for d, dirs, names in os.walk(m):
                    dirs.sort()
                    for n in names:
                        files.add(os.path.relpath(os.path.join(d, n), context))
            else:
                files.add(os.path.relpath(m, context))
    return sorted(f for f in files if not ignored(f, rules))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    context, dockerfile, extras = argv[0], argv[1], argv[2:]
    text = open(dockerfile).read()
    h = hashlib.sha256()
    h.update(b"dockerfile\0" + text.encode() + b"\0")
    ign = os.path.join(context, ".dockerignore")
    if os.path.exists(ign):
        h.update(b"dockerignore\0" + open(ign, "rb").read() + b"\0")
    for rel in context_files(context, copy_sources(text), ignore_rules(context)):
        p = os.path.join(context, rel)
        if os.path.islink(p):
            h.update(f"link\0{rel}\0{os.readlink(p)}\0".encode())
            continue
        h.update(f"file\0{rel}\0{os.stat(p).st_mode & 0o111 != 0}\0".encode())
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    for e in extras:
        h.update(b"extra\0" + e.encode() + b"\0")
    print(h.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
