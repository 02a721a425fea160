"""The README's Python example runs as written (sizes shrunk so it takes seconds)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = _python_example()
    for old, new in [("n_train=4000", "n_train=600, n_eval=400"), ("epochs=5", "epochs=2")]:
        assert old in code, f"the README example changed: {old!r} not found; update this test"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert (tmp_path / "runs/nine/discovery.json").exists()
    assert (tmp_path / "runs/nine/fixed/model.safetensors").exists()
    assert "Image Worst-Group" in out and "tied to" in out


def test_documented_install_extras_exist():
    """Every `-e ".[extra,...]"` / `ravl[extra]` in README and docs names an extra pyproject declares
    (pip only warns about an unknown extra and installs nothing for it)."""
    import tomllib

    root = README.parent
    declared = set(tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
                   ["optional-dependencies"])
    texts = [README, *sorted((root / "docs").rglob("*.md"))]
    used = {}
    for path in texts:
        for group in re.findall(r"""(?:-e\s+["']?\.|ravl)\[([A-Za-z0-9_,\- ]+)\]""", path.read_text(encoding="utf-8")):
            for extra in group.split(","):
                used.setdefault(extra.strip(), path.name)
    assert {"open-clip", "hf", "test"} <= set(used), used
    unknown = {e: f for e, f in used.items() if e not in declared}
    assert not unknown, f"extras not in pyproject.toml: {unknown}"
