"""The HTML report: self-contained, rendered from saved results, checked in a real browser when present."""

import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from ravl.report import write_report
from ravl.report.figures import draw_box, region_gallery, region_tile


def _fake_discovery(ds, feature="red_square"):
    table = ds.region_table()
    rows = [k for k, a in enumerate(table.attributes) if a == feature][:12]
    regions = [{"region_index": int(k), "image_index": int(table.image_index[k]), "similarity": 1.0 - 0.01 * j,
                "file_name": ds.records[int(table.image_index[k])].file_name, "box": list(map(float, table.boxes[k]))}
               for j, k in enumerate(rows)]
    tab = [{"class": c, "acc_present": 0.9 if c == "nine" else 0.5, "n_present": 10, "acc_absent": 0.2,
            "n_absent": 10, "weight": 1.0, "gap": 0.7 if c == "nine" else -0.1} for c in ds.classes]
    return {"status": "found", "message": "1 feature", "classes": list(ds.classes), "n_regions": len(table.boxes),
            "n_images": len(ds), "n_clusters": 20, "silhouette": 0.5,
            "k_sweep": [{"k": k, "silhouette": 0.3 + 0.01 * k, "inertia": 1.0, "n_iter": 3, "converged": True}
                        for k in range(20, 30)],
            "meta": {"model": "tiny", "region_mode": "masked"},
            "features": [{"rank": 1, "cluster": 3, "class": "nine", "gap": 1.3, "influence": 0.8,
                          "spurious_pattern": True, "n_regions": len(regions), "n_images": len(regions),
                          "medoid_region_index": regions[0]["region_index"], "table": tab, "regions": regions}]}


@pytest.fixture(scope="module")
def eval_ds(small_setting):
    from ravl.data.dataset import load_dataset

    return load_dataset(small_setting.eval_dir, split="val")


def test_report_is_self_contained_and_complete(eval_ds, tmp_path):
    d = _fake_discovery(eval_ds)
    (tmp_path / "discovery.json").write_text(json.dumps(d))
    page = write_report(tmp_path / "discovery.json", eval_ds, tmp_path)
    html = page.read_text()
    assert "Feature 1: tied to" in html and "nine" in html
    assert not re.search(r'src="(?!data:)', html), "every image must be inlined"
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) == 3  # gallery, gap chart, silhouette chart
    for b in imgs:
        base64.b64decode(b)
    for f in ("gallery_1.png", "gaps_1.png", "silhouette.png"):
        assert Image.open(tmp_path / f).size[0] > 100
    # regenerating from the same files gives the same page
    assert write_report(d, eval_ds, tmp_path).read_text() == html


def test_report_for_nothing_found(eval_ds, tmp_path):
    d = _fake_discovery(eval_ds)
    d.update(features=[], status="none_passed", message="No cluster passed the filter.")
    html = write_report(d, eval_ds, tmp_path).read_text()
    assert "No cluster passed" in html and "Feature 1" not in html


def test_gallery_draws_the_box_and_crops_the_region():
    img = Image.new("RGB", (56, 56))
    img.paste((255, 0, 0), (28, 28, 56, 56))
    boxed = np.asarray(draw_box(img, (0, 0, 28, 28)))
    assert tuple(boxed[0, 10]) == (0, 200, 255)  # outline on the top edge of the box
    tile = np.asarray(region_tile(img, (28, 28, 56, 56), size=56))
    assert tuple(tile[20, 20]) == (255, 0, 0)  # the crop (left) is the red region
    g = region_gallery([region_tile(img, (0, 0, 28, 28))] * 7, columns=3)
    assert g.size[0] > g.size[1]


def _screenshot(url: str, out, profile) -> np.ndarray:
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", "--window-size=1200,1600",
                    f"--screenshot={out}", url], check=True, timeout=120, capture_output=True)
    return np.asarray(Image.open(out).convert("RGB"))


def _rendered_problems(arr: np.ndarray) -> list[str]:
    """What is wrong with a screenshot of report.html (empty list: it looks like the report)."""
    problems = []
    if arr.shape[:2] != (1600, 1200):
        problems.append(f"size {arr.shape[:2]}")
    dark = (arr.max(axis=2) < 90).sum()               # text, table rules, black image backgrounds
    red = ((arr[..., 0] > 200) & (arr[..., 1] < 60) & (arr[..., 2] < 60)).sum()
    if dark < 20_000:
        problems.append(f"only {dark} dark pixels: no text or images rendered")
    if red < 2000:
        problems.append(f"only {red} red pixels: the red-square regions of the gallery are not visible")
    return problems


needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("RAVL_REQUIRE_CHROMIUM"),
    reason="Debian's chromium is not installed (CI installs it and sets RAVL_REQUIRE_CHROMIUM=1)")


@needs_chromium
def test_report_renders_in_headless_chromium(eval_ds, tmp_path):
    page = write_report(_fake_discovery(eval_ds), eval_ds, tmp_path)
    arr = _screenshot(page.as_uri(), tmp_path / "shot.png", tmp_path / "profile")
    assert _rendered_problems(arr) == []


@needs_chromium
def test_the_screenshot_check_fails_on_a_blank_or_broken_page(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    assert _rendered_problems(_screenshot(blank.as_uri(), tmp_path / "a.png", tmp_path / "p1"))
    broken = tmp_path / "broken.html"  # the page without its inlined images (e.g. a truncated write)
    broken.write_text("<html><body><h1>Discovery report</h1><img src='data:image/png;base64,AAAA'></body></html>")
    assert _rendered_problems(_screenshot(broken.as_uri(), tmp_path / "b.png", tmp_path / "p2"))


def _fake_evaluation(classes):
    def result(acc_with, acc_without, wg):
        groups = [{"label": c, "feature_present": p, "accuracy": (acc_with if p else acc_without) if c == "nine"
                   else 1.0, "n": 10} for c in classes for p in (True, False)]
        return {"spurious_feature": "red_square", "classes": list(classes),
                "image": {"overall": 0.9, "n": 20 * len(classes), "per_class": {}, "groups": groups,
                          "worst_group": {"label": "nine", "feature_present": False, "accuracy": wg, "n": 10}}}

    def side(ckpt, m, acc_with, acc_without):
        return {"checkpoint": ckpt, "result": result(acc_with, acc_without, acc_without),
                "metrics": {"Image Overall": m, "Image Worst-Group": acc_without, "Region Overall": m,
                            "Region Worst-Group": acc_without}}

    return {"method": "ravl", "split": "test", "before": side("ckpt/std", 0.887, 1.0, 0.24),
            "after": side("ckpt/ravl", 0.943, 0.96, 0.82)}


def test_report_mitigation_section_renders_saved_before_after(eval_ds, tmp_path):
    d = _fake_discovery(eval_ds)
    ev = _fake_evaluation(eval_ds.classes)
    (tmp_path / "evaluation.json").write_text(json.dumps(ev))
    page = write_report(d, eval_ds, tmp_path, mitigation=tmp_path / "evaluation.json").read_text()
    assert "Mitigation: before and after" in page and "ckpt/ravl" in page
    assert "<td>Image Worst-Group</td><td>0.240</td><td>0.820</td>" in page
    assert "nine without red_square (0.820, n = 10)" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4  # + the before/after chart
    assert Image.open(tmp_path / "mitigation.png").size[0] > 100
    assert write_report(d, eval_ds, tmp_path, mitigation=ev).read_text() == page
