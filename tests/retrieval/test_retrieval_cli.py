"""``ravl retrieval`` run in-process on a tiny synthetic folder with the built-in tiny model."""

import json

from ravl.cli import main
from ravl.models import load_model, save_checkpoint


def test_retrieval_cli_writes_json(caption_folder, tmp_path, capsys):
    ck = save_checkpoint(load_model("tiny", seed=0), tmp_path / "ck")
    out = tmp_path / "r.json"
    assert main(["retrieval", "--checkpoint", str(ck), "--data", str(caption_folder), "--split", "test",
                 "--json", str(out), "--quiet", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "image->text" in text and "text->image" in text and "R@10" in text and "wrote" in text
    d = json.loads(out.read_text())
    r = d["retrieval"]
    assert r["n_images"] == 4 and r["n_captions"] == 6 and r["ks"] == [1, 5, 10] and r["split"] == "test"
    # 4 images: every relevant item is within the top 10
    assert r["image_to_text"]["recall@10"] == 1.0 and r["text_to_image"]["recall@10"] == 1.0
    assert 0 < r["image_to_text"]["map"] <= 1 and d["model"] == "tiny" and r["meta"]["same_text"] is False
    assert main(["retrieval", "--data", str(caption_folder), "--same-text", "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["retrieval"]["meta"]["same_text"] is True


def test_retrieval_cli_errors(caption_folder, tmp_path, capsys):
    assert main(["retrieval", "--data", str(tmp_path / "nope"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nope" in err
    assert main(["retrieval", "--data", str(caption_folder), "--ks", "0,5", "--quiet"]) == 2
    assert "--ks" in capsys.readouterr().err
    assert main(["retrieval", "--data", str(caption_folder), "--split", "val", "--quiet"]) == 1
    assert "no row has split 'val'" in capsys.readouterr().err


def test_retrieval_cli_with_odmap(object_folder, tmp_path, capsys):
    from ravl.data.dataset import load_dataset
    from ravl.data.manipulation import manipulate_dataset

    manipulate_dataset(load_dataset(object_folder), tmp_path / "q", object="red_square", progress=False)
    out = tmp_path / "r.json"
    assert main(["retrieval", "--data", str(object_folder), "--odmap-queries", str(tmp_path / "q"),
                 "--odmap-k", "3", "--relevance", "any", "--json", str(out), "--quiet", "--device", "cpu"]) == 0
    assert "ODmAP@3 (any relevance, reconstructed)" in capsys.readouterr().out
    od = json.loads(out.read_text())["odmap"]
    assert od["reconstructed"] is True and od["k"] == 3 and od["n_queries"] == 3 and 0 <= od["value"] <= 1
    assert main(["retrieval", "--data", str(object_folder), "--odmap-queries", str(object_folder), "--quiet"]) == 1
    assert "no 'remove'" in capsys.readouterr().err
