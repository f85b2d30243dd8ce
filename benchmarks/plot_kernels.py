"""Bar chart of a benchmarks/test_kernels.py run: median forward+backward time per implementation.

    python benchmarks/plot_kernels.py kernels.json kernels.png

One panel per benchmark group (shape-dtype), one bar per implementation (log scale, with the
inter-quartile range as an error bar), each labelled with its median and its slowdown against
the fused C++ kernel.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

FUSED = "fused_cpp"


def load_groups(path: str) -> dict[str, list[dict]]:
    """{group: [{"impl", "median_ms", "q1_ms", "q3_ms"}, ...]} from a pytest-benchmark JSON file."""
    with open(path) as handle:
        report = json.load(handle)
    groups = defaultdict(list)
    for bench in report["benchmarks"]:
        stats = bench["stats"]
        groups[bench["group"]].append(dict(impl=bench["extra_info"]["impl"], median_ms=stats["median"] * 1e3,
                                           q1_ms=stats["q1"] * 1e3, q3_ms=stats["q3"] * 1e3))
    if not groups:
        raise ValueError(f"{path} holds no benchmarks; run `python -m pytest benchmarks --benchmark-only "
                         f"--benchmark-json={path}` first")
    return dict(sorted(groups.items()))


def draw_group(axis, group: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda row: row["median_ms"])
    fused = next((row["median_ms"] for row in rows if row["impl"] == FUSED), None)
    names = [row["impl"] for row in rows]
    medians = [row["median_ms"] for row in rows]
    spread = [[row["median_ms"] - row["q1_ms"] for row in rows], [row["q3_ms"] - row["median_ms"] for row in rows]]
    colors = ["tab:green" if name == FUSED else "tab:gray" for name in names]
    bars = axis.bar(range(len(rows)), medians, yerr=spread, color=colors, capsize=3)
    for bar, row in zip(bars, rows):
        label = f"{row['median_ms']:.1f} ms" + (f"\n{row['median_ms'] / fused:.1f}x" if fused else "")
        axis.annotate(label, (bar.get_x() + bar.get_width() / 2, row["q3_ms"]), xytext=(0, 2),
                      textcoords="offset points", ha="center", va="bottom", fontsize=7)
    axis.set_xticks(range(len(rows)), names, rotation=25, ha="right", fontsize=8)
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(ScalarFormatter())
    axis.yaxis.set_minor_formatter(NullFormatter())
    axis.set_ylim(top=max(row["q3_ms"] for row in rows) * 2.5)
    axis.set_title(group, fontsize=10)
    axis.set_ylabel("forward + backward, median ms")


def plot(groups: dict[str, list[dict]], out_path: str) -> None:
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), squeeze=False)
    for axis, (group, rows) in zip(axes[0], groups.items()):
        draw_group(axis, group, rows)
    figure.suptitle("RMSNorm + MMA adapter on CPU (lower is better; Nx = slower than fused_cpp)")
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("png_path", help="where to write the chart")
    args = parser.parse_args(argv)
    plot(load_groups(args.json_path), args.png_path)
    print(f"wrote {args.png_path}")


if __name__ == "__main__":
    main()
