"""read_pairs: LFW pairs.txt and CSV pair lists, and the line-numbered errors on bad lines."""

from __future__ import annotations

import re

import pytest

from marginkit.data import read_pairs
from marginkit.data.pairs import Pair

LFW = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Aaron_Peirsol\t1\t2
Aaron_Peirsol\t3\t4
Abdullah_Gul\t13\tVojislav_Kostunica\t7
Adam_Sandler\t2\tAlex_Holmes\t1
"""


def _write(tmp_path, text, name="pairs.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lfw_pairs_with_header(tmp_path):
    pairs = read_pairs(_write(tmp_path, LFW))
    assert len(pairs) == 8
    assert pairs[0] == Pair(
        "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True
    )
    assert pairs[2] == (
        "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg",
        "Dean_Barker/Dean_Barker_0001.jpg",
        False,
    )
    assert pairs[6].first == "Abdullah_Gul/Abdullah_Gul_0013.jpg"
    assert [p.issame for p in pairs] == [True, True, False, False] * 2
    first, second, issame = pairs[1]  # a plain tuple too
    assert issame and first.endswith("_0001.jpg") and second.endswith("_0003.jpg")


def test_lfw_without_header_with_spaces_and_a_single_count_header(tmp_path):
    body = "Abel_Pacheco 1 4\n\nAbdel_Madi_Shabneh  1  Dean_Barker  1\n"
    assert len(read_pairs(_write(tmp_path, body))) == 2
    assert len(read_pairs(_write(tmp_path, "1\n" + body))) == 2  # pairsDevTrain.txt style


@pytest.mark.parametrize(
    "line,why",
    [
        ("Abel_Pacheco\t1\n", "expected 3 fields .* got 2"),
        ("Abel_Pacheco\t1\t2\t3\t4\n", "expected 3 fields .* got 5"),
        ("Abel_Pacheco\tone\t4\n", "image number 'one' is not an int >= 1"),
        ("Abel_Pacheco\t0\t4\n", "image number '0' is not an int >= 1"),
        ("Abel_Pacheco\t1\t7\tDean_Barker\n", "image number 'Dean_Barker' is not an int >= 1"),
    ],
)
def test_bad_lfw_lines_name_their_number(tmp_path, line, why):
    text = "Akhmed_Zakayev\t1\t3\n" + line
    with pytest.raises(ValueError, match=f"line 2: {why}: {re.escape(repr(line.strip()))}"):
        read_pairs(_write(tmp_path, text))


def test_lfw_header_count_must_match(tmp_path):
    with pytest.raises(ValueError, match="line 1: the header announces 8 pairs, the file lists 7"):
        read_pairs(_write(tmp_path, LFW.rsplit("\n", 2)[0] + "\n"))


def test_csv_with_and_without_header(tmp_path):
    text = 'path1,path2,issame\na.jpg,b.jpg,1\nc.jpg, d.jpg ,FALSE\n"e,1.jpg",f.jpg,true\ng.jpg,h.jpg,0\n'
    pairs = read_pairs(_write(tmp_path, text, "pairs.csv"))
    assert pairs == [
        Pair("a.jpg", "b.jpg", True),
        Pair("c.jpg", "d.jpg", False),
        Pair("e,1.jpg", "f.jpg", True),
        Pair("g.jpg", "h.jpg", False),
    ]
    no_header = read_pairs(_write(tmp_path, "a.jpg,b.jpg,0\n", "list.txt"))  # sniffed: a comma
    assert no_header == [Pair("a.jpg", "b.jpg", False)]


@pytest.mark.parametrize(
    "text,number,why",
    [
        ("a,b,1\nc,d\n", 2, "expected 3 fields .* got 2"),
        ("a,b,1\nc,d,yes\n", 2, "issame must be 0, 1, true or false, got 'yes'"),
        ("p1,p2,same\na,b,1\nc,d,2\n", 3, "issame must be 0, 1, true or false, got '2'"),
        ("a,b,1\n,d,0\n", 2, "empty path"),
    ],
)
def test_bad_csv_lines_name_their_number(tmp_path, text, number, why):
    with pytest.raises(ValueError, match=f"line {number}: {why}"):
        read_pairs(_write(tmp_path, text, "pairs.csv"))


def test_empty_file_and_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="holds no pairs"):
        read_pairs(_write(tmp_path, "\n\n"))
    with pytest.raises(ValueError, match="holds no pairs"):
        read_pairs(_write(tmp_path, "path1,path2,issame\n", "x.csv"))
    with pytest.raises(ValueError, match="`format` must be one of"):
        read_pairs(_write(tmp_path, LFW), format="json")


def test_explicit_format_overrides_the_guess(tmp_path):
    path = _write(tmp_path, "a.jpg,b.jpg,1\n", "pairs.txt")
    with pytest.raises(ValueError, match="line 1: expected 3 fields"):
        read_pairs(path, format="lfw")
