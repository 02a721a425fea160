import json

from ravl.cli import main


def test_discover_writes_json_and_report(small_setting, trained_tiny, tmp_path, capsys):
    _, ckpt = trained_tiny
    out = tmp_path / "disc"
    assert main(["discover", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir), "--out", str(out),
                 "--truth", "red_square", "--quiet"]) == 0
    d = json.loads((out / "discovery.json").read_text())
    assert d["meta"]["region_mode"] == "masked" and d["meta"]["split"] == "val"
    n_val = sum(1 for line in (small_setting.eval_dir / "metadata.jsonl").read_text().splitlines() if '"val"' in line)
    assert d["n_images"] == n_val and d["n_regions"] == 4 * n_val
    assert len(d["k_sweep"]) == 30  # K in 2C..5C-1 with C = 10
    for f in d["features"]:
        assert 0.0 <= f["precision_at_10"] <= 1.0
        assert all({"file_name", "box", "region_index"} <= set(r) for r in f["regions"])
    assert (out / "report.html").exists()
    assert "wrote" in capsys.readouterr().out


def test_discover_on_ray_workers_writes_the_serial_discovery(small_setting, trained_tiny, tmp_path):
    import pytest
    import torch

    pytest.importorskip("ray")  # the test extra installs it: CI runs this
    _, ckpt = trained_tiny
    common = ["discover", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir), "--quiet", "--no-report",
              "--k-max", "22"]
    assert main([*common, "--out", str(tmp_path / "serial")]) == 0
    # two Ray workers with this process's thread count embed the same bits, so discovery is the same
    assert main([*common, "--out", str(tmp_path / "ray"), "--backend", "ray", "--ray-workers", "2",
                 "--threads-per-worker", str(torch.get_num_threads()), "--shard-batches", "1"]) == 0
    assert (tmp_path / "ray" / "discovery.json").read_bytes() == (tmp_path / "serial" / "discovery.json").read_bytes()
