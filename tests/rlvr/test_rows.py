"""Reading rows: a row that cannot be read is one bad row; a file that cannot be read is one line."""

import gzip
import json

import pytest

from rlvr.rows import BadRow, UsageError, count_rows, numbered_rows, read_rows


def test_line_numbers_blank_lines_bom_and_carriage_returns(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n\n{"a": \n{"a": "x\ry"}\r\n')
    rows = list(numbered_rows(src))
    assert rows[0] == (1, {"a": 1})  # the byte-order mark is not an error
    assert rows[1][0] == 4 and isinstance(rows[1][1], BadRow)  # line 4, though the 2nd row
    assert "column" in rows[1][1].error and "at at" not in rows[1][1].error
    assert rows[2] == (5, {"a": "x\ry"})  # a \r inside a line: one row, not two bad ones
    assert count_rows(src) == 3


def test_files_that_cannot_be_read_are_one_usage_error(tmp_path):
    (tmp_path / "gz.jsonl").write_bytes(gzip.compress(b'{"a": 1}\n'))
    with pytest.raises(UsageError, match="gzip-compressed"):
        list(read_rows(tmp_path / "gz.jsonl"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match="not a readable parquet file"):
        list(read_rows(tmp_path / "bad.parquet"))
    (tmp_path / "latin.json").write_bytes(json.dumps([{"a": "é"}], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        list(read_rows(tmp_path / "latin.json"))
    with pytest.raises(UsageError, match="--split test: .* is a single file"):
        list(read_rows(tmp_path / "latin.json", split="test"))


def test_split_of_a_dataset_dict_and_of_a_single_dataset(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"a": 1}] * 3),
                               "test": datasets.Dataset.from_list([{"a": 2}] * 2)})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert count_rows(tmp_path / "dd", "test") == 2 and list(read_rows(tmp_path / "dd", "test")) == [{"a": 2}] * 2
    with pytest.raises(UsageError, match="choose one with --split"):
        count_rows(tmp_path / "dd")
    datasets.Dataset.from_list([{"a": 1}]).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(UsageError, match="is a single dataset"):
        list(read_rows(tmp_path / "one", "test"))
