#!/usr/bin/env python3
"""The wheelhouse of hack/images/build.sh: one wheel per pinned package of the lock files.

    wheelhouse.py missing WHEELS OUT LOCK...   write to OUT the name==version lines with no wheel in WHEELS
    wheelhouse.py prune WHEELS LOCK...         delete the wheels no LOCK pins (older versions)

Run with the interpreter whose pip fills the wheelhouse (it brings `packaging`).
"""

from __future__ import annotations

import os
import sys

try:
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip's vendored copy
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version


def pins(locks: list[str]) -> dict[tuple, str]:
    out = {}
    for lock in locks:
        for line in open(lock):
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                out[(canonicalize_name(name), Version(version))] = line
    return out


def wheels_in(d: str) -> dict[tuple, str]:
    out = {}
    for f in os.listdir(d):
        if f.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(f)
            out[(name, version)] = f
    return out


def main(argv: list[str]) -> int:
    cmd, wheels = argv[0], argv[1]
    if cmd == "missing":
        out, locks = argv[2], argv[3:]
        have = wheels_in(wheels)
        missing = [line for key, line in pins(locks).items() if key not in have]
        with open(out, "w") as f:
            f.writelines(m + "\n" for m in missing)
    elif cmd == "prune":
        pinned = pins(argv[2:])
        for key, f in wheels_in(wheels).items():
            if key not in pinned:
                os.unlink(os.path.join(wheels, f))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
