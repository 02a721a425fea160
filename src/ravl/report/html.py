"""A self-contained HTML report (images inlined) rendered from saved results only.

``write_report(discovery, dataset, out_dir)`` reads a ``discovery.json`` (or its dict) and the
images of the dataset it was computed on, and writes ``report.html`` plus PNG exports of every
gallery and chart. It never computes a metric: rerun it on the same files and you get the same page.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import ravl.report.figures as figures
from ravl.data.dataset import load_dataset
from ravl.utils.io import atomic_write, atomic_write_text

__all__ = ["write_report", "mitigation_section", "verify_section", "evaluation_section"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;font-size:.9rem;margin:.6rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right} th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
tr.hl td{background:#fff3f3;font-weight:600} .pill{display:inline-block;background:#d62728;color:#fff;border-radius:1rem;padding:.1rem .7rem;font-weight:600}
.muted{color:#777} .row{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start} img{max-width:100%;image-rendering:pixelated}
.card{border:1px solid #e4e4e4;border-radius:8px;padding:1rem;margin:1rem 0;background:#fcfcfc} code{background:#f3f3f3;padding:0 .25rem}
"""


def _img_tag(png: bytes, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"{w}>'


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if v != v else f"{v:.3f}"
    return html.escape(str(v))


def _write_png(path: Path, png: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))


def mitigation_section(evaluation: str | os.PathLike | dict[str, Any], out_dir: str | os.PathLike | None = None
                       ) -> str:
    """HTML of a before/after mitigation comparison, rendered from a saved ``evaluation.json``.

    ``evaluation`` is what ``ravl mitigate`` (and ``ravl demo``) write next to the mitigated
    checkpoint: ``{"method", "split", "before": {"checkpoint", "metrics", "result"}, "after": ...}``
    with ``result`` an :class:`~ravl.evaluation.EvaluationResult` dict. With ``out_dir`` the
    chart is also saved as ``mitigation.png`` there.
    """
    if not isinstance(evaluation, dict):
        evaluation = json.loads(Path(evaluation).read_text(encoding="utf-8"))
    before, after = evaluation["before"], evaluation["after"]
    names = list(before["metrics"])
    chart = figures.metric_bars(["before", "after"], names, [[before["metrics"][k] for k in names],
                                                               [after["metrics"][k] for k in names]],
                                title=f"zero-shot accuracy on the {evaluation.get('split', 'test')} split",
                                highlight="after")
    if out_dir is not None:
        _write_png(Path(out_dir) / "mitigation.png", chart)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(before['metrics'][k])}</td>"
                   f"<td>{_fmt(after['metrics'][k])}</td></tr>" for k in names)
    feat = after["result"].get("spurious_feature")
    groups = []
    for which, r in (("before", before), ("after", after)):
        wg = r["result"]["image"].get("worst_group")
        if wg:
            state = "with" if wg["feature_present"] else "without"
            groups.append(f"{which}: {html.escape(str(wg['label']))} {state} {html.escape(str(feat))} "
                          f"({_fmt(wg['accuracy'])}, n = {wg['n']})")
    # Per-class accuracy with vs without the feature, before and after (image level).
    def by_class(r: dict[str, Any]) -> dict[tuple[str, bool], float]:
        return {(g["label"], bool(g["feature_present"])): g["accuracy"] for g in r["result"]["image"]["groups"]}

    gb, ga = by_class(before), by_class(after)
    classes = list(after["result"].get("classes") or [])
    class_rows = "".join(
        f"<tr><td>{html.escape(str(c))}</td><td>{_fmt(gb.get((c, True)))}</td><td>{_fmt(gb.get((c, False)))}</td>"
        f"<td>{_fmt(ga.get((c, True)))}</td><td>{_fmt(ga.get((c, False)))}</td></tr>" for c in classes) if gb else ""
    body = (f'<p class="muted">method <code>{html.escape(str(evaluation.get("method")))}</code> · before = '
            f'<code>{html.escape(str(before["checkpoint"]))}</code> · after = '
            f'<code>{html.escape(str(after["checkpoint"]))}</code></p>'
            f'<div class="row"><div>{_img_tag(chart, "before/after chart")}</div><div><table><tr><th>metric</th>'
            f"<th>before</th><th>after</th></tr>{rows}</table>"
            + ("<p>Worst image group " + "<br>".join(groups) + "</p>" if groups else "") + "</div></div>")
    if class_rows:
        body += ("<h3>Image accuracy per class, with vs without the feature</h3><table><tr><th>class</th>"
                 "<th>before: with</th><th>before: without</th><th>after: with</th><th>after: without</th></tr>"
                 f"{class_rows}</table>")
    return body


def evaluation_section(evaluation: str | os.PathLike | dict[str, Any]) -> str:
    """HTML of a saved evaluation (``ravl evaluate --json`` / ``ravl audit``'s ``evaluation.json``): the four
    metrics, where the groups came from, and image accuracy per class with and without the feature."""
    if not isinstance(evaluation, dict):
        evaluation = json.loads(Path(evaluation).read_text(encoding="utf-8"))
    res = evaluation.get("evaluation") or evaluation
    metrics = evaluation.get("metrics") or {}
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in metrics.items())
    feat = res.get("spurious_feature")
    source = {"discovery": "the discovered feature (the data has no region_attributes)",
              "region_attributes": "the region_attributes of the data"}.get(evaluation.get("groups_from") or "")
    body = (f'<p class="muted">split {html.escape(str(res.get("split")))} · {res.get("n_images")} images · prompts: '
            f'{html.escape(str(evaluation.get("template_source") or "given"))}'
            + (f" · groups: {html.escape(str(feat))}, from {html.escape(source)}" if feat and source else "")
            + f"</p><table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
    if not feat:
        body += ("<p>No worst-group metrics: the data has no region_attributes and discovery found no feature to "
                 "form the groups.</p>")
        return body
    groups = {(g["label"], bool(g["feature_present"])): g for g in res["image"]["groups"]}
    class_rows = "".join(
        f"<tr><td>{html.escape(str(c))}</td>"
        + "".join(f"<td>{_fmt(groups[(c, p)]['accuracy'])} ({groups[(c, p)]['n']})</td>" if (c, p) in groups
                  else "<td>–</td>" for p in (True, False)) + "</tr>" for c in res.get("classes", []))
    wg = res["image"].get("worst_group")
    if wg:
        state = "with" if wg["feature_present"] else "without"
        body += (f"<p>Worst image group: {html.escape(str(wg['label']))} {state} the feature "
                 f"({_fmt(wg['accuracy'])}, n = {wg['n']})</p>")
    body += ("<table><tr><th>class</th><th>image accuracy with the feature (n)</th><th>without (n)</th></tr>"
             f"{class_rows}</table>")
    return body


def verify_section(verify: str | os.PathLike | dict[str, Any]) -> str:
    """HTML of the verify step of ``ravl mitigate`` (a saved ``verify.json``): each discovered feature's
    class with and without the feature, before and after mitigation, and what discovery finds after."""
    if not isinstance(verify, dict):
        verify = json.loads(Path(verify).read_text(encoding="utf-8"))
    rows = []
    for f in verify.get("features", []):
        b, a = f.get("class_before") or {}, f.get("class_after") or {}
        rows.append(f"<tr><td>#{f['rank']}</td><td>{html.escape(str(f['class']))}</td><td>{f['n_images_with']}</td>"
                    f"<td>{_fmt(b.get('acc_with'))}</td><td>{_fmt(b.get('acc_without'))}</td><td>{_fmt(b.get('gap'))}</td>"
                    f"<td>{_fmt(a.get('acc_with'))}</td><td>{_fmt(a.get('acc_without'))}</td><td>{_fmt(a.get('gap'))}</td>"
                    f"<td>{_fmt(f['before']['G'])} → {_fmt(f['after']['G'])}</td></tr>")
    body = (f'<p class="muted">on the {html.escape(str(verify.get("split")))} split discovery examined '
            f'({html.escape(str(verify.get("data")))}); an image carries a feature when one of its regions is in the '
            "feature's cluster</p><table><tr><th>feature</th><th>class</th><th>images with it</th>"
            "<th>before: acc. with</th><th>before: without</th><th>before: gap Δ</th><th>after: acc. with</th>"
            "<th>after: without</th><th>after: gap Δ</th><th>G (all classes)</th></tr>" + "".join(rows) + "</table>")
    redo = verify.get("rediscovery")
    if redo is not None:
        if not redo["features"]:
            body += f"<p>Discovery on the mitigated model finds no feature. {html.escape(str(redo.get('message') or ''))}</p>"
        else:
            items = "".join(
                f"<li>#{g['rank']}: tied to <b>{html.escape(str(g['class']))}</b>, gap {_fmt(g['gap'])}, "
                + (f"overlaps original feature #{g['matches_original']} (Jaccard {_fmt(g['jaccard'])})"
                   if g.get("matches_original") is not None else "a new cluster") + "</li>"
                for g in redo["features"])
            body += f"<p>Discovery on the mitigated model finds {redo['n_features']} feature(s):</p><ul>{items}</ul>"
    return body


def write_report(discovery: str | os.PathLike | dict[str, Any], dataset, out_dir: str | os.PathLike, *,
                 max_regions: int = 20, max_features: int = 5, title: str | None = None,
                 extra_sections: list[tuple[str, str]] | None = None,
                 mitigation: str | os.PathLike | dict[str, Any] | None = None,
                 verify: str | os.PathLike | dict[str, Any] | None = None,
                 evaluation: str | os.PathLike | dict[str, Any] | None = None) -> Path:
    """Render ``report.html`` (self-contained) and PNG exports into ``out_dir``.

    Args:
        discovery: Path to ``discovery.json``, its dict (see docs/discovery.md for the schema) or a
            :class:`~ravl.discovery.DiscoveryResult`.
        dataset: The :class:`~ravl.data.RegionDataset` (or its folder) the regions come from;
            regions are found by their ``file_name`` and ``box``.
        out_dir: Where ``report.html``, ``gallery_<rank>.png``, ``gaps_<rank>.png`` and
            ``silhouette.png`` go.
        max_regions: Regions shown per feature.
        max_features: Discovered features shown.
        title: Page title.
        extra_sections: ``(heading, html)`` pairs appended.
        mitigation: A saved ``evaluation.json`` of ``ravl mitigate`` (path or dict): adds a
            before/after section (:func:`mitigation_section`) and ``mitigation.png``.
        verify: A saved ``verify.json`` of ``ravl mitigate`` (path or dict): adds the per-feature
            before/after section (:func:`verify_section`).
        evaluation: A saved evaluation (``ravl audit``'s ``evaluation.json``): adds the accuracy
            section (:func:`evaluation_section`), placed before the discovered features.

    Returns:
        Path of ``report.html``.
    """
    if hasattr(discovery, "to_dict"):
        discovery = discovery.to_dict()
    elif not isinstance(discovery, dict):
        discovery = json.loads(Path(discovery).read_text(encoding="utf-8"))
    if not hasattr(dataset, "records"):
        dataset = load_dataset(dataset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = {r.file_name: i for i, r in enumerate(dataset.records)}
    cache: dict[int, Any] = {}

    def image(file_name: str):
        i = index.get(file_name)
        if i is None:
            return None
        if i not in cache:
            cache[i] = dataset.load_image(i)
        return cache[i]

    feats = list(discovery.get("features", []))
    classes = list(discovery.get("classes", []))
    parts = [f"<h1>{html.escape(title or 'ravl discovery report')}</h1>"]
    cfg = discovery.get("config", {})
    meta = [f"{len(feats)} feature(s) kept"]
    if discovery.get("n_regions") is not None:
        meta.append(f"{discovery['n_regions']} regions of {discovery.get('n_images', '?')} images")
    prov = discovery.get("meta") or {}
    if discovery.get("n_clusters") is not None:
        sil = discovery.get("silhouette")
        meta.append(f"K = {discovery['n_clusters']}" + (f" (silhouette {sil:.3f})" if sil is not None else ""))
    if discovery.get("bounded_memory"):
        meta.append(f"clustered a sample of {discovery.get('sample_size')} regions (bounded-memory path)")
    if prov.get("region_mode"):
        meta.append(f"region embeddings: {prov['region_mode']}")
    if prov.get("region_source") and prov["region_source"] != "boxes":
        meta.append(f"regions: {prov['region_source']}")
    if prov.get("template_source"):
        meta.append(f"prompts: {prov['template_source']}")
    if prov.get("model"):
        meta.append(f"model: {prov['model']}")
    parts.append(f'<p class="sub">{html.escape(" · ".join(meta))}</p>')
    if discovery.get("message"):
        parts.append(f'<p class="card">{html.escape(str(discovery["message"]))}</p>')
    if evaluation is not None:
        parts.append("<h2>Zero-shot accuracy</h2>" + evaluation_section(evaluation))
    if not feats:
        parts.append('<p class="card">No cluster passed the spurious-pattern and influence filter: ravl found no '
                     "region feature that the model ties to a class on this data.</p>")

    for f in feats[:max_features]:
        rank = f.get("rank", feats.index(f) + 1)
        cls = f.get("class")
        parts.append(f"<h2>Feature {rank}: tied to <span class=\"pill\">{html.escape(str(cls))}</span></h2>")
        parts.append(f'<p class="muted">cluster {f.get("cluster")} · {len(f.get("regions", []))} regions · '
                     f'gap G = {_fmt(f.get("gap"))} · influence H = {_fmt(f.get("influence"))}</p>')
        tiles = []
        for reg in f.get("regions", [])[:max_regions]:
            img = image(reg.get("file_name", ""))
            if img is not None and reg.get("box") is not None:
                tiles.append(figures.region_tile(img, reg["box"], size=96))
        if tiles:
            gal = figures.png_bytes(figures.region_gallery(tiles, columns=4))
            _write_png(out / f"gallery_{rank}.png", gal)
            parts.append(f"<h3>Top regions (crop, and the box on the full image)</h3>{_img_tag(gal, 'regions')}")
        table = f.get("table", [])
        if table:
            chart = figures.gap_chart([t["class"] for t in table], [t.get("acc_present") for t in table],
                                      [t.get("acc_absent") for t in table], highlight=cls,
                                      title="zero-shot accuracy with vs without the feature")
            _write_png(out / f"gaps_{rank}.png", chart)
            rows = "".join(
                f'<tr class="{"hl" if t["class"] == cls else ""}"><td>{html.escape(str(t["class"]))}</td>'
                f'<td>{_fmt(t.get("acc_present"))} ({_fmt(t.get("n_present"))})</td>'
                f'<td>{_fmt(t.get("acc_absent"))} ({_fmt(t.get("n_absent"))})</td>'
                f'<td>{_fmt(t.get("gap"))}</td></tr>' for t in table)
            parts.append('<div class="row"><div>' + _img_tag(chart, "accuracy chart") + "</div><div>"
                         "<table><tr><th>class</th><th>with feature (n)</th><th>without (n)</th>"
                         f"<th>weighted gap Δ</th></tr>{rows}</table></div></div>")

    sweep = [e for e in discovery.get("k_sweep") or [] if e.get("silhouette") is not None]
    if sweep:
        chart = figures.silhouette_chart([e["k"] for e in sweep], [e["silhouette"] for e in sweep],
                                         chosen=discovery.get("n_clusters"))
        _write_png(out / "silhouette.png", chart)
        parts.append("<h2>Choosing the number of clusters</h2>" + _img_tag(chart, "silhouette vs K"))
    if mitigation is not None:
        parts.append("<h2>Mitigation: before and after</h2>" + mitigation_section(mitigation, out))
    if verify is not None:
        parts.append("<h2>Each discovered feature, before and after mitigation</h2>" + verify_section(verify))
    for heading, body in extra_sections or []:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if cfg:
        parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(cfg, indent=2)) + "</pre>")
    if classes:
        parts.append(f'<p class="muted">classes: {html.escape(", ".join(map(str, classes)))}</p>')
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title or 'ravl discovery report')}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    return atomic_write_text(out / "report.html", page)
