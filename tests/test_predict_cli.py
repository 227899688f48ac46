"""run/predict.py (serve/predict_cli.py): where the CSV goes, and a folder with unreadable pictures."""

from __future__ import annotations

import csv
import io

import pytest
from PIL import Image, ImageDraw

from conftest import TINY, launch
from moelab.serve import predict_cli


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One trained job of one MoE variant."""
    import yaml

    root = tmp_path_factory.mktemp("predict")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "variants": [TINY["variants"][2]], "grid": {},
                                      "train": {**TINY["train"], "epochs": 1}}))
    done = launch(root, "run_here", str(config), "--experiments-dir", "experiments", "--no-report")
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "experiments" / "tiny"


def drawing() -> bytes:
    image = Image.new("L", (32, 32), "white")
    ImageDraw.Draw(image).line([(16, 4), (16, 28)], fill="black", width=4)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_unreadable_pictures_are_named_and_the_rest_answered_next_to_the_input(experiment, tmp_path, monkeypatch,
                                                                               capsys):
    pictures = tmp_path / "inputs" / "pictures"
    pictures.mkdir(parents=True)
    (pictures / "one.png").write_bytes(drawing())
    (pictures / "seven.png").write_bytes(drawing())
    (pictures / "torn.png").write_bytes(drawing()[:40])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where the command runs from (the repository, say) gets nothing
    assert predict_cli.main([str(pictures), "--experiment", str(experiment)]) == 0
    out, err = capsys.readouterr()
    assert "torn.png" in err and "one.png" not in err
    assert "2 input(s) x 1 run(s)" in out and "1 picture(s) left out" in out
    assert list(elsewhere.iterdir()) == []
    with open(tmp_path / "inputs" / "predictions.csv") as f:
        assert [row["input"] for row in csv.DictReader(f)] == ["one.png", "seven.png"]


def test_a_folder_of_only_unreadable_pictures_is_an_error(experiment, tmp_path, capsys):
    (tmp_path / "torn.png").write_bytes(b"not a png")
    assert predict_cli.main([str(tmp_path), "--experiment", str(experiment), "--out", str(tmp_path / "p.csv")]) == 2
    assert "torn.png" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()


def test_out_says_where_the_csv_goes(experiment, tmp_path, capsys):
    (tmp_path / "one.png").write_bytes(drawing())
    out = tmp_path / "deeper" / "answers.csv"
    assert predict_cli.main([str(tmp_path / "one.png"), "--experiment", str(experiment), "--out", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "predictions.csv").exists()
