"""Pictures for reports: region galleries, accuracy-gap charts, silhouette curves.

Every function takes plain saved values (never computes metrics) and returns a PIL image or PNG
bytes, so a report can be regenerated from ``discovery.json`` alone plus the dataset images.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_box", "region_tile", "region_gallery", "gap_chart", "silhouette_chart", "metric_bars",
           "precision_vs_strength", "png_bytes"]

BOX_COLOUR = (0, 200, 255)


def png_bytes(img: Image.Image) -> bytes:
    """Encode a PIL image as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def draw_box(image: Image.Image, box: Sequence[float], *, colour=BOX_COLOUR, width: int | None = None) -> Image.Image:
    """A copy of ``image`` with ``box`` ([x0, y0, x1, y1] pixels) outlined."""
    img = image.convert("RGB").copy()
    w = width or max(1, round(min(img.size) / 40))
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=colour, width=w)
    return img


def region_tile(image: Image.Image, box: Sequence[float], *, size: int = 112) -> Image.Image:
    """Side-by-side tile: the region cropped (left) and the full image with the box drawn (right)."""
    img = image.convert("RGB")
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = img.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    crop.thumbnail((size, size), Image.Resampling.NEAREST if max(crop.size) < size else Image.Resampling.BILINEAR)
    crop = crop.resize((max(1, crop.width * size // max(crop.size)), max(1, crop.height * size // max(crop.size))),
                       Image.Resampling.NEAREST)
    full = draw_box(img, box)
    scale = size / max(full.size)
    full = full.resize((max(1, round(full.width * scale)), max(1, round(full.height * scale))),
                       Image.Resampling.NEAREST)
    tile = Image.new("RGB", (2 * size + 6, size), (255, 255, 255))
    tile.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    tile.paste(full, (size + 6 + (size - full.width) // 2, (size - full.height) // 2))
    return tile


def region_gallery(tiles: Sequence[Image.Image], *, columns: int = 5, pad: int = 8,
                   background=(255, 255, 255)) -> Image.Image:
    """Arrange region tiles in a grid (row-major, rank order)."""
    if not tiles:
        return Image.new("RGB", (1, 1), background)
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    cols = min(columns, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    out = Image.new("RGB", (cols * (tw + pad) + pad, rows * (th + pad) + pad), background)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out.paste(t, (pad + c * (tw + pad), pad + r * (th + pad)))
    return out


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def gap_chart(classes: Sequence[str], acc_present: Sequence[float | None], acc_absent: Sequence[float | None],
              *, title: str = "", highlight: str | None = None) -> bytes:
    """Grouped bar chart of per-class accuracy with vs without a feature (PNG bytes).

    Missing values (``None``) are drawn as empty bars.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(classes) + 1.5), 2.8))
    p = [np.nan if v is None else v for v in acc_present]
    a = [np.nan if v is None else v for v in acc_absent]
    ax.bar(x - 0.2, p, 0.4, label="feature present", color="#d62728")
    ax.bar(x + 0.2, a, 0.4, label="feature absent", color="#7f7f7f")
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    for lbl in ax.get_xticklabels():
        if highlight is not None and lbl.get_text() == highlight:
            lbl.set_fontweight("bold")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("zero-shot accuracy")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_png(fig)


def silhouette_chart(ks: Sequence[int], scores: Sequence[float], *, chosen: int | None = None) -> bytes:
    """Silhouette score against the number of clusters K (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    ax.plot(list(ks), list(scores), marker="o", ms=3, color="#1f77b4")
    if chosen is not None and chosen in list(ks):
        s = list(scores)[list(ks).index(chosen)]
        ax.scatter([chosen], [s], s=60, facecolors="none", edgecolors="#d62728", zorder=3,
                   label=f"chosen K = {chosen}")
        ax.legend(fontsize=8)
    ax.set_xlabel("K (clusters)")
    ax.set_ylabel("silhouette")
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_png(fig)


def metric_bars(methods: Sequence[str], metrics: Sequence[str], means: Sequence[Sequence[float | None]],
                errors: Sequence[Sequence[float | None]] | None = None, *, title: str = "",
                highlight: str | None = None, ylabel: str = "accuracy") -> bytes:
    """Grouped bars: one group per metric, one bar per method, optional error bars (PNG bytes).

    ``means[i][j]`` is method i's value of metric j (``None``: no bar); ``errors`` alike (e.g.
    95 % CI half-widths). The ``highlight`` method is drawn in red, the others in greys and blues.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    n_m = len(methods)
    x = np.arange(len(metrics))
    width = 0.8 / max(n_m, 1)
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(metrics) + 2.5), 3.2))
    k = 0
    for i, m in enumerate(methods):
        vals = [np.nan if v is None else v for v in means[i]]
        err = None
        if errors is not None:
            err = [0.0 if e is None or e != e else e for e in errors[i]]
        colour = "#d62728" if m == highlight else palette(k % 10 if k < 3 else (k + 1) % 10)
        if m != highlight:
            k += 1
        ax.bar(x - 0.4 + (i + 0.5) * width, vals, width, yerr=err, capsize=2, label=m, color=colour,
               edgecolor="white", linewidth=0.5)
    ax.set_xticks(x, list(metrics))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_png(fig)


def precision_vs_strength(summary) -> bytes:
    """P@10 vs Cramér's V of a discovery grid, from its saved summary (PNG bytes).

    Up to four panels: RaVL and its ablations, baselines under adaptation A, under adaptation B,
    and other registered methods, each with RaVL and Random for reference. Error bars: 95 % CI
    half-widths, clipped to [0, 1].

    Args:
        summary: :func:`ravl.benchmarks.discovery.summary_tables`' dict (``summary.json``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = {t["method"]: t for t in summary["methods"]}

    def of(adaptation):
        return [m for m, t in table.items() if t["adaptation"] == adaptation]

    ref = [m for m in ("ravl", "random") if m in table]
    groups = [(title, ms) for title, ms in [
        ("RaVL and its ablations", of("RaVL") + of("-")),
        ("baselines, adaptation A (image-then-region)", ref + of("A")),
        ("baselines, adaptation B (region-as-sample)", ref + of("B")),
        ("other methods", ref + of("?"))] if set(ms) - set(ref) or (title.startswith("RaVL") and ms)]
    groups = groups or [("methods", list(table))]
    xs_all = sorted({float(v) for t in table.values() for v in t["by_strength"]})
    step = (xs_all[-1] - xs_all[0]) / 120 if len(xs_all) > 1 else 0.002
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.9), sharey=True, squeeze=False)
    for ax, (title, ms) in zip(axes[0], groups):
        for i, m in enumerate(ms):
            dodge = (i - (len(ms) - 1) / 2) * step  # keep overlapping points and error bars apart
            pts = [(float(v), c["p_at_10"], c["ci95"]) for v, c in table[m]["by_strength"].items() if c["n"]]
            if not pts:
                continue
            xs, ys, es = zip(*sorted(pts))
            es = [0.0 if e is None else e for e in es]
            yerr = [[min(e, y) for y, e in zip(ys, es)], [min(e, 1 - y) for y, e in zip(ys, es)]]  # CI clipped to [0, 1]
            style = {"color": "black", "ls": "--"} if m == "ravl" and not title.startswith("RaVL") else {}
            if m == "random":
                style = {"color": "grey", "ls": ":"}
            ax.errorbar([x + dodge for x in xs], ys, yerr=yerr, marker="o", capsize=3, label=m, **style)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("Cramér's V of the planted correlation")
        ax.set_xticks(xs_all)
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("Precision@10")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
