"""The Markdown table every report prints."""

import pytest

from cryptfs.util.mdtable import markdown_table


def test_header_alignment_and_rows():
    table = markdown_table(["name", "MiB/s"], [["a", 1.5], ["b", "2"]], "lr")
    assert table.splitlines() == ["| name | MiB/s |", "|---|---:|", "| a | 1.5 |",
                                  "| b | 2 |"]


def test_left_aligned_by_default_and_rows_from_a_generator():
    table = markdown_table(["x", "y", "z"], ([i, i * 2, ""] for i in range(2)))
    assert table.splitlines()[1:] == ["|---|---|---|", "| 0 | 0 |  |", "| 1 | 2 |  |"]


def test_an_alignment_that_does_not_fit_the_header_is_refused():
    with pytest.raises(ValueError, match="one letter per column"):
        markdown_table(["a", "b"], [], "r")
