"""``lstmkit demo``: the quick run writes a complete report; bad input fails in one line.

The quick run trains every section with tiny budgets (about 15 s in all, most of it importing
Lightning and fitting ARIMA), so this file runs it once and checks the page and the JSON.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from lstmkit import demo
from lstmkit.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("adding_curves", "gradient_norms", "forecast", "lm_curve")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    root = tmp_path_factory.mktemp("demo")
    text = root / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40, encoding="utf-8")
    out = root / "report"
    figures = root / "figures.json"
    argv = ["demo", "--quick", "--out", str(out), "--data", str(text), "--json", str(figures)]
    assert main(argv) == 0
    return out, json.loads(figures.read_text(encoding="utf-8")), str(text)


def test_quick_run_writes_every_section_with_embedded_images(
    quick_run: tuple[Path, dict[str, Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = quick_run
    page = (out / "index.html").read_text(encoding="utf-8")
    for anchor in ("parity", "adding", "forecast", "lm"):
        assert f"id='{anchor}'" in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(FIGURES)
    for data, name in zip(embedded, FIGURES, strict=True):
        png = base64.b64decode(data)
        assert png.startswith(PNG_MAGIC)
        assert (out / f"{name}.png").read_bytes() == png  # the same figure beside the page
    assert "<script" not in page and "http" not in page  # opens offline


def test_json_holds_the_measured_numbers(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    out, results, source = quick_run
    assert results == json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["report"] == str(out / "index.html")
    assert results["quick"] is True
    assert results["parity"]["output"] < 1e-5 and results["parity"]["gradient"] < 1e-4
    adding = results["adding"]
    for name in ("RNN", "GRU", "LSTM"):
        assert 0.0 < adding[name]["test_mse"] < 10.0
        assert adding[name]["grad_h_at_loss"] > 0.0
    assert adding["LSTM"]["grad_c_at_start"] > 0.0
    forecast = results["forecast"]
    assert forecast["horizon"] == 24 and forecast["train_months"] > 400
    assert len(forecast["models"]) == 3
    for scores in forecast["models"].values():
        assert scores["mae"] <= scores["rmse"]  # true of any errors: a check they are real
        assert 0.0 <= scores["coverage_80"] <= 1.0
    lm = results["language_model"]
    assert lm["source"] == source
    # the vocabulary of the file written above: its 28 distinct characters plus the specials
    assert lm["vocab"] >= 28 and math.isclose(lm["uniform_bpc"], math.log2(lm["vocab"]))
    steps = [s["step"] for s in lm["samples"]]
    assert steps == sorted(set(steps)) and steps[-1] == lm["steps"]
    for sample in lm["samples"]:
        assert sample["text"].startswith("The ") and len(sample["text"]) > 4
        assert math.isfinite(sample["valid_bpc"])


def test_page_numbers_come_from_the_run(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    out, results, _ = quick_run
    page = (out / "index.html").read_text(encoding="utf-8")
    assert f"{results['adding']['LSTM']['test_mse']:.4f}" in page
    for scores in results["forecast"]["models"].values():
        assert f"{scores['rmse']:.3f}" in page
    assert f"{results['language_model']['final_valid_bpc']:.2f}" in page


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("short\n", "needs at least 100"), (b"\xff\xfe\x00bad", "not UTF-8")],
)
def test_bad_data_is_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "text.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--data", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("lstmkit demo: error: --data ") and message in err
    assert not out.exists()  # failed before any training or writing


def test_default_text_is_the_projects_docs() -> None:
    text, source = demo.read_training_text(None)
    assert "README.md and docs/*.md" in source or "Python sources" in source
    assert "LSTM" in text and len(text) > 10_000


def test_bad_seed_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        demo.run(out=tmp_path, seed=-1, quick=True, progress=False)
