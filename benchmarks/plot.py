"""Plots of the cluster benchmark as dependency-free SVG: time vs N and efficiency vs N, per system.

.venv/bin/python -m benchmarks.plot build/bench/file-1g.jsonl --workload file-1g --out docs/images/bench-file-1g.svg
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.cluster_bench import rebound

COLORS = {"xfd": "#1f77b4", "naive": "#d62728", "ray": "#2ca02c"}
WIDTH, HEIGHT, PAD = 360, 260, 48


def series(records: list[dict[str, Any]], workload: str, cap: float, field: str) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if r["workload"] == workload and r["cap_mbps"] == cap:
            points.setdefault(r["system"], {}).setdefault(r["nodes"], []).append(r[field])
    return {s: sorted((n, statistics.median(v)) for n, v in by_n.items()) for s, by_n in points.items()}


def panel(x0: int, title: str, data: dict[str, list[tuple[int, float]]], y_label: str) -> list[str]:
    xs = sorted({n for pts in data.values() for n, _ in pts}) or [1]
    top = max((v for pts in data.values() for _, v in pts), default=1.0) * 1.1

    def sx(n: int) -> float:
        return x0 + PAD + (xs.index(n) / max(len(xs) - 1, 1)) * (WIDTH - 2 * PAD)

    def sy(v: float) -> float:
        return HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD)

    out = [
        f'<text x="{x0 + WIDTH / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>',
        f'<line x1="{x0 + PAD}" y1="{HEIGHT - PAD}" x2="{x0 + WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>',
        f'<line x1="{x0 + PAD}" y1="{PAD}" x2="{x0 + PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>',
        f'<text x="{x0 + 12}" y="{HEIGHT / 2}" font-size="11" transform="rotate(-90 {x0 + 12} {HEIGHT / 2})" '
        f'text-anchor="middle">{y_label}</text>',
        f'<text x="{x0 + WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle" font-size="11">nodes (N)</text>',
    ]
    for n in xs:
        out.append(f'<text x="{sx(n)}" y="{HEIGHT - PAD + 14}" text-anchor="middle" font-size="10">{n}</text>')
    for fraction in (0.0, 0.5, 1.0):
        value = top / 1.1 * fraction
        out.append(f'<text x="{x0 + PAD - 4}" y="{sy(value) + 3}" text-anchor="end" font-size="10">{value:.3g}</text>')
    for system, pts in sorted(data.items()):
        color = COLORS.get(system, "#555")
        path = " ".join(f"{sx(n):.1f},{sy(v):.1f}" for n, v in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="3" fill="{color}"/>' for n, v in pts]
    for i, system in enumerate(sorted(data)):
        out.append(
            f'<text x="{x0 + PAD + 8 + 60 * i}" y="{PAD - 8}" font-size="11" '
            f'fill="{COLORS.get(system, "#555")}">{system}</text>'
        )
    return out


def render(records: list[dict[str, Any]], workload: str) -> str:
    records = rebound(records)
    caps = sorted({r["cap_mbps"] for r in records if r["workload"] == workload}, reverse=True)
    body: list[str] = []
    for row, cap in enumerate(caps):
        label = f"origin capped at {cap:.0f} MB/s" if cap else "origin uncapped"
        shift = row * HEIGHT
        body.append(f'<g transform="translate(0 {shift})">')
        body += panel(
            0, f"{workload}: wall time, {label}", series(records, workload, cap, "wall_s"), "seconds (median)"
        )
        body += panel(
            WIDTH,
            f"{workload}: efficiency T_min / T, {label}",
            series(records, workload, cap, "efficiency"),
            "efficiency",
        )
        body.append("</g>")
    height = HEIGHT * max(len(caps), 1)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * WIDTH}" height="{height}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="+")
    parser.add_argument("--workload", default="file-1g")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    records = [
        json.loads(line) for path in args.results for line in Path(path).read_text().splitlines() if line.strip()
    ]
    Path(args.out).write_text(render(records, args.workload))


if __name__ == "__main__":
    main()
