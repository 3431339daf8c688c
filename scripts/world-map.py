#!/usr/bin/env python3
"""Make the dashboard's world map (crates/beacon-query/dashboard/world.svg) from
@svg-maps/world 2.0.0 (Victor Cazanave, CC BY 4.0; `npm pack @svg-maps/world@2.0.0`).

Usage: scripts/world-map.py path/to/package/world.svg > crates/beacon-query/dashboard/world.svg

The source is 1.2 MB of 3-decimal relative paths. Its shapes are made absolute,
points closer than TOLERANCE to the last kept one are dropped, islands smaller
than MIN_SIZE are left out (never a country's largest shape), and coordinates
are rounded to one decimal: about a fifth of the size, the same map at dashboard scale.
Each path keeps its id (the ISO 3166-1 alpha-2 code, lowercase) and its name.
"""

import re
import sys
from xml.etree import ElementTree

TOLERANCE = 1.5
MIN_SIZE = 1.2
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[a-zA-Z]")


def shapes(d):
    """The absolute rings of a path made of m (with implicit lines), l and z."""
    tokens = NUMBER.findall(d)
    rings, ring = [], []
    x = y = 0.0
    start = (0.0, 0.0)
    command = None
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.isalpha():
            command = t
            i += 1
            if t in "zZ":
                if ring:
                    rings.append(ring)
                ring = []
                x, y = start
            continue
        dx, dy = float(tokens[i]), float(tokens[i + 1])
        i += 2
        if command in ("m", "M"):
            if ring:
                rings.append(ring)
            x, y = (x + dx, y + dy) if command == "m" else (dx, dy)
            start = (x, y)
            ring = [(x, y)]
            command = "l" if command == "m" else "L"
        elif command == "l":
            x, y = x + dx, y + dy
            ring.append((x, y))
        elif command == "L":
            x, y = dx, dy
            ring.append((x, y))
        else:
            raise ValueError(f"unexpected path command {command!r}")
    if ring:
        rings.append(ring)
    return rings


def size(ring):
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return max(max(xs) - min(xs), max(ys) - min(ys))


def simplify(ring):
    kept = [ring[0]]
    for p in ring[1:]:
        last = kept[-1]
        if abs(p[0] - last[0]) + abs(p[1] - last[1]) >= TOLERANCE:
            kept.append(p)
    return kept


def main():
    tree = ElementTree.parse(sys.argv[1])
    svg = tree.getroot()
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="{}">'.format(svg.get("viewBox")),
        # No address in the file: the dashboard's files name none (a test checks it).
        "<!-- @svg-maps/world 2.0.0 by Victor Cazanave, licensed CC BY 4.0 (Creative Commons"
        " Attribution 4.0 International), simplified by scripts/world-map.py -->",
    ]
    for path in svg.iter("{http://www.w3.org/2000/svg}path"):
        rings = shapes(path.get("d"))
        largest = max(rings, key=size)
        parts = []
        for ring in rings:
            if ring is not largest and size(ring) < MIN_SIZE:
                continue
            points = simplify(ring)
            if len(points) < 3:
                points = ring[:3] if len(ring) >= 3 else ring
            parts.append("M" + " ".join(f"{x:.1f} {y:.1f}" for x, y in points) + "Z")
        name = path.get("aria-label").replace("&", "&amp;").replace('"', "&quot;")
        out.append(f'<path id="{path.get("id")}" aria-label="{name}" d="{"".join(parts)}"/>')
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
