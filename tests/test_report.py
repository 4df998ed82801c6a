"""evaluator.report: aggregation over runs, the paper-style markdown table (append semantics),
the terminal table, JSON conversion and the figures."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from evaluator import report as R


def _results(method="m", datasets=("ecssd",), values=(0.5,), toolkit=False, fg_prob=None):
    """The results dict evaluate() builds: per dataset, each protocol's summary and runs."""
    ds = {}
    for name in datasets:
        summary = {k: R.aggregate(list(values)) for k in ("max_f", "iou", "accuracy", "mae")}
        runs = [{"metrics": {}, "curves": {"precision_curve": np.linspace(1, 0.5, 255),
                                           "recall_curve": np.linspace(0, 1, 255)[::-1]}, "per_image": {}}]
        protocols = {"paper": {"summary": summary, "runs": runs}}
        if toolkit:
            keys = ("max_f", "mean_f", "s_measure", "e_mean", "mae", "weighted_f")
            protocols["sod-toolkit"] = {"summary": {k: R.aggregate([v / 2 for v in values]) for k in keys},
                                        "runs": runs}
        ds[name] = {"task": "mask", "protocol": "short128", "n_images": 3, "summary": summary,
                    "protocols": protocols}
    return {"method": method, "fg_prob": fg_prob, "sources": [{}] * len(values), "datasets": ds,
            "tool": {"version": "x"}}


def test_aggregate_uses_sample_std():
    a = R.aggregate([0.1, 0.2, 0.6])
    assert a["mean"] == pytest.approx(0.3)
    assert a["std"] == pytest.approx(np.sqrt(((0.2) ** 2 + 0.1 ** 2 + 0.3 ** 2) / 2))
    assert a["n"] == 3 and a["runs"] == [0.1, 0.2, 0.6]
    assert R.aggregate([0.7])["std"] == 0.0


def test_format_value():
    assert R.format_value(R.aggregate([0.7134])) == "0.713"
    assert R.format_value(R.aggregate([0.7, 0.72])) == "0.710 ± 0.014"


def test_markdown_appends_rows_under_the_same_header(tmp_path):
    md = tmp_path / "results.md"
    R.append_markdown(md, _results("A", ("ecssd", "duts-te")))
    R.append_markdown(md, _results("B|x", ("ecssd", "duts-te"), (0.25, 0.75)))
    lines = md.read_text().splitlines()
    assert lines[0] == ("| Method | fg prob | ecssd maxFβ | ecssd IoU | ecssd Acc | duts-te maxFβ | duts-te IoU | "
                        "duts-te Acc |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| A | - | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 |"
    assert lines[3] == "| B\\|x | - | " + " | ".join(["0.500 ± 0.354"] * 6) + " |"
    assert len(lines) == 4


def test_markdown_shows_the_papers_three_beside_the_toolkits_and_the_fg_prob(tmp_path):
    md = tmp_path / "results.md"
    R.append_markdown(md, _results("A", ("ecssd",), (0.5,), toolkit=True, fg_prob="sigmoid1"))
    lines = md.read_text().splitlines()
    assert lines[0] == ("| Method | fg prob | ecssd maxFβ | ecssd IoU | ecssd Acc | ecssd SOD maxFβ | ecssd SOD Sα | "
                        "ecssd SOD meanEξ | ecssd SOD MAE | ecssd SOD wFβ |")
    assert lines[2] == "| A | sigmoid1 | 0.500 | 0.500 | 0.500 | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 |"


def test_markdown_other_columns_start_a_new_table_and_keep_the_old(tmp_path):
    md = tmp_path / "results.md"
    R.append_markdown(md, _results("A", ("ecssd",)))
    R.append_markdown(md, _results("B", ("cub",)))
    R.append_markdown(md, _results("C", ("cub",)))
    assert md.read_text().splitlines() == [
        "| Method | fg prob | ecssd maxFβ | ecssd IoU | ecssd Acc |", "|---|---|---|---|---|",
        "| A | - | 0.500 | 0.500 | 0.500 |",
        "",
        "| Method | fg prob | cub maxFβ | cub IoU | cub Acc |", "|---|---|---|---|---|",
        "| B | - | 0.500 | 0.500 | 0.500 |",
        "| C | - | 0.500 | 0.500 | 0.500 |",
    ]


def test_terminal_table_lists_every_number_per_protocol():
    text = R.terminal_table(_results("A", ("ecssd",), (0.2, 0.4), toolkit=True, fg_prob="softmax"))
    head, rule, paper, toolkit, fg, note = text.splitlines()
    assert head.split() == ["dataset", "images", "input", "protocol", "maxFβ", "IoU", "Acc", "MAE", "Sα", "meanEξ",
                            "wFβ", "meanFβ"]
    assert paper.split()[:4] == ["ecssd", "3", "short128", "paper"] and "0.300 ± 0.141" in paper
    assert toolkit.split()[:4] == ["ecssd", "3", "short128", "sod-toolkit"] and "0.150 ± 0.071" in toolkit
    assert paper.split()[4 + 4 * 3] == "-"  # after maxFβ, IoU, Acc, MAE: the paper reports no Sα here
    assert fg == "foreground probability: softmax" and "2 runs" in note


def test_to_jsonable_converts_numpy_and_nonfinite():
    out = R.to_jsonable({"a": np.arange(3), "b": np.float32(0.5), 3: [np.nan, np.int64(4)]})
    assert json.dumps(out, allow_nan=False) == '{"a": [0, 1, 2], "b": 0.5, "3": [null, 4]}'


def test_pick_examples_best_median_worst_with_stable_ties():
    ids = ["a", "b", "c", "d", "e"]
    picks = R.pick_examples(ids, np.array([0.5, 0.9, 0.1, 0.5, 0.3]))
    assert picks == [("best", "b", 0.9), ("median", "d", 0.5), ("worst", "c", 0.1)]  # b a d e c


def test_examples_png_layout():
    img = np.zeros((20, 40, 3), np.uint8)
    gt = np.zeros((20, 40), bool)
    pred = np.zeros((20, 40), np.uint8)
    rows = [(lab, "id", img, gt, pred, 0.5) for lab in ("best", "median", "worst")]
    png = cv2.imdecode(np.frombuffer(R.examples_png(rows, height=50), np.uint8), cv2.IMREAD_COLOR)
    # three rows of (22-pixel caption + 50-pixel tiles + 4-pixel gap); three 100-wide tiles + 2 gaps
    assert png.shape == (3 * (22 + 50 + 4), 3 * 100 + 2 * 4, 3)


def test_pr_curve_png_with_matplotlib_and_cv2():
    res = _results()
    png = R.pr_curve_png(res)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    fallback = R._pr_curve_cv2([("ecssd", np.linspace(0, 1, 5), np.linspace(1, 0, 5), 2)])
    assert cv2.imdecode(np.frombuffer(fallback, np.uint8), cv2.IMREAD_COLOR).shape == (480, 480, 3)
    res["datasets"]["ecssd"]["protocols"]["paper"]["runs"][0]["curves"] = {}
    assert R.pr_curve_png(res) is None


def test_write_outputs_writes_results_json_last(tmp_path, monkeypatch):
    order = []
    real_replace = R.os.replace
    monkeypatch.setattr(R.os, "replace", lambda a, b: (order.append(b.name if hasattr(b, "name") else b),
                                                       real_replace(a, b)))
    written = R.write_outputs(tmp_path / "out", _results())
    assert [p.name for p in written] == ["pr_curve.png", "results.md", "results.json"]
    assert [n for n in order if not str(n).endswith(".staged")] == ["pr_curve.png", "results.md", "results.json"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["method"] == "m"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pr_curve.png", "results.json", "results.md"]
