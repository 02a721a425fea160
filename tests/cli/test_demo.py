import json

import pytest

from ravl.cli import main


@pytest.mark.filterwarnings("ignore::ravl.discovery.core.NoFeatureWarning")
def test_demo_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-train", "600", "--n-eval", "200", "--epochs", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "[4/4] RaVL discovery" in text and "The shortcut:" in text
    d = json.loads((out / "demo.json").read_text())
    assert d["setting"]["spurious_class"] == "nine" and abs(d["setting"]["achieved_v"] - 0.95) < 0.05
    assert (out / "discovery" / "discovery.json").exists() and (out / "discovery" / "report.html").exists()
