"""The printed results table: groups, marks, flags and notes."""

from __future__ import annotations

from marginkit.cli.results import RunFacts, print_metrics, unresolved_far, worse_than_raw

METRICS = {
    "val/precision@1": 0.9,
    "val/map@r": 0.61,
    "val/auc": 0.8,
    "val/tar@far=0.0001": 0.1,
    "val/tar@far=0.01": 0.4,
    "val/n_queries_without_match": 3.0,
    "test/precision@1": 0.85,
    "test/map@r": 0.60,
    "test/auc": 0.75,
    "test/tar@far=0.0001": 0.09,
    "test/tar@far=0.01": 0.35,
    "test/n_queries_without_match": 0.0,
    "baseline/map@r": 0.62,
    "baseline/precision@1": 0.8,
}


def _printed(capsys, facts: RunFacts) -> list[str]:
    print_metrics(METRICS, title="t", facts=facts)
    return capsys.readouterr().out.splitlines()


def test_rows_are_grouped_and_marked(capsys):
    facts = RunFacts(
        monitor="val/map@r",
        best_epoch=7,
        negative_pairs={"val": 500, "test": 20_000},
        checkpoints=[("best checkpoint", "run/checkpoints/best.ckpt")],
    )
    lines = _printed(capsys, facts)
    text = "\n".join(lines)
    rows = [line.split("│")[1].strip() for line in lines if line.count("│") > 2]
    retrieval, verification = rows[: rows.index("auc")], rows[rows.index("auc") :]
    assert set(retrieval) == {"map@r (monitored)", "n_queries_without_match", "precision@1"}
    assert set(verification) == {"auc", "tar@far=0.0001", "tar@far=0.01"}
    assert "best val (epoch 7)" in text
    count_row = next(line for line in lines if "n_queries_without_match" in line)
    assert [cell.strip() for cell in count_row.split("│")[2:4]] == ["3", "0"]
    # 500 negatives resolve FARs down to 1/500 = 0.002: 1e-4 is flagged on val only.
    far_row = next(line for line in lines if "tar@far=0.0001" in line)
    assert [cell.strip() for cell in far_row.split("│")[2:4]] == ["0.1000 *", "0.0900"]
    assert "* val: 500 negative pairs resolve FARs down to 0.002 only" in text
    assert "note: the model does worse than the raw inputs on test map@r: 0.6000 vs 0.6200" in text
    assert "best checkpoint: run/checkpoints/best.ckpt" in text


def test_unresolved_far_and_the_raw_input_comparison():
    assert unresolved_far("tar@far=0.0001", 9_999) == 1 / 9_999
    assert unresolved_far("tar@far=0.0001", 10_000) is None
    assert unresolved_far("auc", 10) is None
    assert worse_than_raw(METRICS, "val/precision@1") is None  # 0.85 beats 0.80
    lower_is_better = {"test/eer": 0.3, "baseline/eer": 0.2}
    assert worse_than_raw(lower_is_better, "val/eer").endswith("0.3000 vs 0.2000")
