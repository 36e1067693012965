"""``cloud label import``: CSV and Parquet label files, every row checked before anything is
written, stored under a name made of the labels themselves (the same labels again change
nothing), the newest label of an id winning, and device ``label`` records counted alike."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cloud.labels import LabelError, import_labels, labels_sql
from edgefleet.cli import main
from protocol import dataset
from tests.cloud.records import body, inference, label, record_id, sample


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "dataset"
    batch = body(*(sample(i) for i in range(4)), *(inference(i) for i in range(10, 14)))
    dataset.write_batch(root, "a" * 40, dataset.parse_body(batch))
    return root


def newest(root) -> dict[str, tuple]:
    rows = duckdb.sql(f"SELECT id, label, labeller FROM ({labels_sql(root)})").fetchall()
    return {row[0]: row[1:] for row in rows}


def write_csv(path, text: str):
    path.write_text(text)
    return path


def test_a_csv_file_is_stored_as_parquet_and_read_back(root, tmp_path):
    path = write_csv(
        tmp_path / "l.csv",
        f"id,label,labeller\n{record_id(0)},2,alice\n{record_id(11)},3,\n{record_id(2)},,bob\n",
    )
    done = import_labels(root, path, labeller="team")
    assert (done.written, done.rows, done.skipped, done.unknown) == (True, 2, 1, [])
    assert done.path.parent == root / "labels" and len(done.path.stem) == 64
    assert newest(root) == {record_id(0): (2, "alice"), record_id(11): (3, "team")}
    # The dataset's own queries do not take the labels directory for rows.
    assert main(["cloud", "dataset", "list", "--dataset", str(root), "--json"]) == 0


def test_the_same_labels_again_change_nothing_whatever_the_format(root, tmp_path):
    path = write_csv(tmp_path / "l.csv", f"id,label\n{record_id(1)},1\n{record_id(12)},0\n")
    first = import_labels(root, path)
    before = first.path.stat().st_mtime_ns
    again = import_labels(root, path)
    assert (again.written, again.path) == (False, first.path)
    table = pa.table({"label": [0, 1], "id": [record_id(12), record_id(1)]})
    pq.write_table(table, tmp_path / "l.parquet")
    same = import_labels(root, tmp_path / "l.parquet")
    assert (same.written, same.path) == (False, first.path)
    assert [p.name for p in (root / "labels").iterdir()] == [first.path.name]
    assert first.path.stat().st_mtime_ns == before


def test_an_export_with_labels_filled_in_imports_by_dev_boot_seq(root, tmp_path):
    out = tmp_path / "export.parquet"
    argv = ["cloud", "dataset", "export", "--dataset", str(root), "--stream", "samples",
            "--format", "parquet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    exported = pq.read_table(out).to_pylist()
    for row in exported[:3]:
        row["label"] = 3
    pq.write_table(pa.Table.from_pylist(exported), out)
    done = import_labels(root, out, labeller="curator")
    assert (done.rows, done.skipped) == (3, 1)
    assert "input" in done.ignored_columns and "dev" not in done.ignored_columns
    assert newest(root) == {record_id(i): (3, "curator") for i in range(3)}


def test_ids_not_in_the_dataset_are_counted_not_refused(root, tmp_path):
    path = write_csv(tmp_path / "l.csv", f"id,label\n{record_id(0)},1\nghost:0123abcd:7,2\n")
    done = import_labels(root, path)
    assert done.written and done.rows == 2 and done.unknown == ["ghost:0123abcd:7"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id,label\ncam-1:0123abcd0123abcd:0,1\nnot-an-id,2\n", "row 2: id 'not-an-id' is not"),
        ("id,label\ncam-1:0123abcd0123abcd:0,x\n", "row 1: label 'x' is not a class index"),
        ("id,label\ncam-1:0123abcd0123abcd:0,-1\n", "row 1: label '-1' is not a class index"),
        ("id,label\ncam-1:0123abcd0123abcd:0,1024\n", "row 1: label '1024' is not a class"),
        ("id,label,labelled_at\ncam-1:0123abcd0123abcd:0,1,2024-05-01T10:00:00\n",
         "row 1: labelled_at 2024-05-01T10:00:00 has no time zone"),
        ("id,label,labelled_at\ncam-1:0123abcd0123abcd:0,1,yesterday\n",
         "row 1: labelled_at 'yesterday' is not an ISO 8601 time"),
        ("id,label,labeller\ncam-1:0123abcd0123abcd:0,1,a b\n", "row 1: labeller 'a b'"),
        ("id,label\ncam-1:0123abcd0123abcd:0,1\ncam-1:0123abcd0123abcd:0,2\n",
         "row 2: id cam-1:0123abcd0123abcd:0 is labelled again \\(row 1\\)"),
        ("name,label\nx,1\n", "no 'id' column"),
        ("id,class\ncam-1:0123abcd0123abcd:0,1\n", "no 'label' column"),
    ],
)  # fmt: skip
def test_a_bad_row_is_named_and_nothing_is_written(root, tmp_path, text, problem):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(LabelError, match=problem) as caught:
        import_labels(root, path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    assert not (root / "labels").exists()


def test_a_bad_parquet_row_is_named_too(root, tmp_path):
    table = pa.table({"id": [record_id(0), record_id(1)], "label": [1.0, 2.5]})
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(LabelError, match=r"bad.parquet row 2: label '2.5' is not a class"):
        import_labels(root, tmp_path / "bad.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(LabelError, match="not a readable parquet file"):
        import_labels(root, tmp_path / "junk.parquet")
    assert not (root / "labels").exists()


def test_the_newest_label_wins_and_device_labels_count_alike(root, tmp_path):
    old = "2024-05-01T10:00:00Z"
    write_csv(tmp_path / "a.csv", f"id,label,labelled_at\n{record_id(0)},1,{old}\n"
              f"{record_id(1)},1,{old}\n{record_id(2)},1,\n")  # fmt: skip
    write_csv(tmp_path / "b.csv", f"id,label,labelled_at\n{record_id(0)},2,2024-05-02T00:00:00Z\n"
              f"{record_id(1)},2,2024-04-30T00:00:00+02:00\n")  # fmt: skip
    import_labels(root, tmp_path / "a.csv", "first")
    import_labels(root, tmp_path / "b.csv", "second")
    assert newest(root) == {
        record_id(0): (2, "second"),  # newer
        record_id(1): (1, "first"),  # the second file's label is older
        record_id(2): (1, "first"),
    }
    later = 1_800_000_000_000  # 2027: newer than every imported label
    corrections = body(
        label(100, record_id(1), 3, later),
        label(101, record_id(13), 0),
        label(102, record_id(0), 0),  # 2023: older than the imported label of 2024
    )
    dataset.write_batch(root, "b" * 40, dataset.parse_body(corrections))
    got = newest(root)
    assert got[record_id(1)] == (3, "device") and got[record_id(13)] == (0, "device")
    assert got[record_id(0)] == (2, "second")


def test_cli_json_and_one_line_errors(root, tmp_path, capsys):
    path = write_csv(tmp_path / "l.csv", f"id,label\n{record_id(0)},1\n")
    argv = ["cloud", "label", "import", str(path), "--dataset", str(root), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["written"] and out["rows"] == 1 and out["unknown_ids"] == 0
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["written"] is False
    write_csv(path, "id,label\nbad,1\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgefleet: error: {path} row 1: id 'bad' is not dev:boot:seq"]


def test_an_export_carries_the_labels_and_labelled_only_makes_an_evaluation_set(
    root, tmp_path, capsys
):
    """Training and evaluation sets read the labels people gave, not the dataset's empty
    column: the newest label of each id, only labelled rows with --labelled."""
    import numpy as np

    ids = sorted(
        f"{d}:{b}:{s}"
        for d, b, s in duckdb.sql(
            f"SELECT dev, boot, seq FROM read_parquet('{root}/stream=samples/**/*.parquet')"
        ).fetchall()
    )
    path = write_csv(tmp_path / "l.csv", f"id,label\n{ids[0]},3\n{ids[1]},1\n")
    import_labels(root, path)
    out = tmp_path / "all.npz"
    argv = ["cloud", "dataset", "export", "--dataset", str(root), "--stream", "samples",
            "--format", "npz"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    everything = np.load(out)
    by_id = dict(zip(everything["ids"].tolist(), everything["labels"].tolist(), strict=True))
    assert by_id[ids[0]] == 3 and by_id[ids[1]] == 1
    assert all(v == -1 for k, v in by_id.items() if k not in ids[:2])
    assert main([*argv, "--labelled", "--out", str(tmp_path / "eval.npz")]) == 0
    chosen = np.load(tmp_path / "eval.npz")
    assert sorted(chosen["ids"].tolist()) == ids[:2] and (chosen["labels"] >= 0).all()
    capsys.readouterr()
