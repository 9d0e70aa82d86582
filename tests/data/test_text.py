"""Sentence files and STS-B csvs: reading, and clear errors for every kind of bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from contrastkit.data.text import load_sentences, load_sts, load_sts_split, shared_data_dir
from contrastkit.errors import DataError

SHARED = shared_data_dir() / "text"


def sts_row(
    score: str = "2.500", s1: str = "A girl is styling her hair.", s2: str = "A girl brushes hair."
) -> str:
    return "\t".join(["main-captions", "MSRvid", "2012test", "0024", score, s1, s2])


def test_plain_and_gzip_give_the_same_sentences(tmp_path: Path) -> None:
    text = "the first sentence .\n  a second one , with spaces  \nthird\n"
    (tmp_path / "s.txt").write_text(text, encoding="utf-8")
    (tmp_path / "s.txt.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    expected = ["the first sentence .", "a second one , with spaces", "third"]
    assert load_sentences(tmp_path / "s.txt") == expected
    assert load_sentences(tmp_path / "s.txt.gz") == expected
    assert load_sentences(tmp_path / "s.txt.gz", limit=2) == expected[:2]


def test_empty_lines_are_named_or_skipped_on_request(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("one\n\ntwo\n   \nthree\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"2 empty line\(s\): line 2, 4;.*skip_empty=True"):
        load_sentences(path)
    assert load_sentences(path, skip_empty=True) == ["one", "two", "three"]


def test_lines_are_counted_as_wc_does(tmp_path: Path) -> None:
    """Only \\n, \\r\\n and \\r end a line: a form feed or U+2028 inside a line neither splits its sentence
    nor shifts the line numbers an error names."""
    path = tmp_path / "s.txt"
    path.write_bytes("a\x0cb\r\nsecond\nthird\u2028part\nfourth\rfifth\n\nseventh\n".encode("utf-8"))
    with pytest.raises(DataError, match=r"1 empty line\(s\): line 6;"):
        load_sentences(path)
    assert load_sentences(path, skip_empty=True) == [
        "a\x0cb",
        "second",
        "third\u2028part",
        "fourth",
        "fifth",
        "seventh",
    ]
    sts = tmp_path / "sts-test.csv"
    sts.write_text(sts_row("1.0", "one\x85sentence") + "\n" + sts_row("high") + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: score field 'high'"):
        load_sts(sts)


def test_many_empty_lines_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("x\n" + "\n" * 15 + "y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"15 empty line\(s\): line 2, 3, .*, 11 and 5 more"):
        load_sentences(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("corrupt.gz", b"\x1f\x8b" + b"not really gzip", "corrupt or truncated gzip"),
        ("truncated.gz", gzip.compress(b"one\ntwo\n" * 100)[:-12], "corrupt or truncated gzip"),
        ("latin1.txt", "caf\xe9\nna\xefve\n".encode("latin-1"), r"line 1: not valid UTF-8"),
        ("blank.txt", b"\n\n", "empty line"),
    ],
)
def test_unreadable_files_raise_data_error(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_sentences(path)


def test_all_empty_file_with_skip_says_no_sentences(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no sentences"):
        load_sentences(path, skip_empty=True)


def test_sts_rows_with_extra_fields_and_quotes(tmp_path: Path) -> None:
    rows = [
        sts_row("2.500", 'He said "hi" to me.', "He greeted me."),
        sts_row("5", "US court rules", "Court rules") + "\tsource one\tsource two",
        sts_row("0.000", "A cat.", "A dog."),
    ]
    path = tmp_path / "sts-test.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    pairs = load_sts(path)
    assert len(pairs) == 3
    assert pairs.sentences1 == ['He said "hi" to me.', "US court rules", "A cat."]
    assert pairs.sentences2 == ["He greeted me.", "Court rules", "A dog."]
    torch.testing.assert_close(pairs.scores, torch.tensor([2.5, 5.0, 0.0], dtype=torch.float64))
    assert load_sts_split(tmp_path, "test").sentences1 == pairs.sentences1


def test_a_byte_order_mark_and_a_huge_field_are_read(tmp_path: Path) -> None:
    """A UTF-8 BOM stayed glued to the first sentence (a stray token for the word tokenizer); csv refused a
    field over 128 KiB with a raw _csv.Error naming neither file nor line."""
    text = tmp_path / "bom.txt"
    text.write_bytes(b"\xef\xbb\xbfa b\nc d\n")
    assert load_sentences(text) == ["a b", "c d"]
    sts = tmp_path / "sts-test.csv"
    sts.write_bytes(b"\xef\xbb\xbf" + (sts_row() + "\n" + sts_row("1.0", "x" * 200_000, "y") + "\n").encode())
    pairs = load_sts(sts)
    assert pairs.sentences1 == ["A girl is styling her hair.", "x" * 200_000] and pairs.sentences2[1] == "y"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (sts_row("high"), r"line 2: score field 'high' is not a number in \[0, 5\]"),
        (sts_row("7.5"), r"line 2: score field '7.5' is not a number"),
        (sts_row("nan"), r"line 2: score field 'nan'"),
        ("a\tb\tc\td\t1.0\tonly one sentence", r"line 2: 6 tab-separated field\(s\), expected at least 7"),
        (sts_row("1.0", "", "x"), "line 2: sentence 1 is empty"),
        ("", "line 2: empty line"),
    ],
)
def test_bad_sts_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "sts-dev.csv"
    path.write_text(sts_row() + "\n" + row + "\n" + sts_row() + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_sts(path)
    assert "sts-dev.csv" in str(info.value)


def test_sts_missing_file_and_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_sts_split(tmp_path, "test")
    with pytest.raises(DataError, match="unknown STS-B split 'valid'"):
        load_sts_split(tmp_path, "valid")


def test_shared_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONTRASTKIT_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path


@pytest.mark.skipif(
    not (SHARED / "stsbenchmark").is_dir(), reason="shared data (text/stsbenchmark) not present"
)
def test_real_sts_files_have_the_documented_sizes() -> None:
    sizes = {split: len(load_sts_split(SHARED / "stsbenchmark", split)) for split in ("train", "dev", "test")}
    assert sizes == {"train": 5749, "dev": 1500, "test": 1379}


@pytest.mark.skipif(
    not (SHARED / "sentences.txt.gz").is_file(), reason="shared data (text/sentences.txt.gz) absent"
)
def test_real_sentence_file_has_the_documented_size() -> None:
    assert len(load_sentences(SHARED / "sentences.txt.gz")) == 79266


@pytest.mark.parametrize("scores", [["3.0"], ["2.0", "2.0", "2.0"]])
def test_an_sts_file_whose_gold_scores_are_all_equal_is_refused_by_name(tmp_path: Path, scores: list) -> None:
    """One pair was refused by the Spearman helper without naming the file; equal scores gave NaN silently."""
    path = tmp_path / "sts-test.csv"
    path.write_text("\n".join(sts_row(s, f"a{i} b", f"c{i} d") for i, s in enumerate(scores)) + "\n")
    with pytest.raises(
        DataError, match=r"sts-test.csv' holds \d pair\(s\), all scored .*at least 2 different"
    ):
        load_sts(path)
