"""read_pairs (LFW pairs.txt / CSV, line-numbered errors), pair_file_folds and sample_pairs."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest
import torch

from marginkit.data import pair_file_folds, read_pairs, sample_pairs
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


def test_pair_file_folds(tmp_path):
    assert pair_file_folds(_write(tmp_path, LFW)) == 2
    assert pair_file_folds(_write(tmp_path, "1\nAbel_Pacheco\t1\t4\n")) is None
    assert pair_file_folds(_write(tmp_path, "a.jpg,b.jpg,1\n", "p.csv")) is None


def _check_pair_list(pairs, labels, n_folds, per_fold):
    first, second, issame = pairs.first.tolist(), pairs.second.tolist(), pairs.issame.tolist()
    assert pairs.n_folds == n_folds and len(first) == n_folds * 2 * per_fold
    # Brute force: flags agree with the labels, no self pair, no unordered pair twice.
    assert issame == [labels[a] == labels[b] for a, b in zip(first, second, strict=True)]
    assert all(a != b for a, b in zip(first, second, strict=True))
    unordered = [frozenset(p) for p in zip(first, second, strict=True)]
    assert len(set(unordered)) == len(unordered)
    expected = ([True] * per_fold + [False] * per_fold) * n_folds
    assert issame == expected


@pytest.mark.parametrize(
    "sizes,n_folds,per_fold,expected_per_fold",
    [
        ([40, 30, 50], 10, 20, 20),  # plenty of pairs: rejection sampling
        ([3, 3, 2], 2, 50, 3),  # 7 same pairs: capped at 7 // 2, enumerated
        ([2, 2], 2, 1, 1),  # 2 same pairs, 4 different ones
    ],
)
def test_sample_pairs_against_brute_force(sizes, n_folds, per_fold, expected_per_fold):
    labels = torch.tensor([c for c, size in enumerate(sizes) for _ in range(size)])
    labels = labels[torch.randperm(len(labels))]
    pairs = sample_pairs(labels, n_folds, per_fold, seed=3)
    _check_pair_list(pairs, labels.tolist(), n_folds, expected_per_fold)
    again = sample_pairs(labels, n_folds, per_fold, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(pairs[:3], again[:3], strict=True))


def test_sample_pairs_covers_every_pair_when_all_are_asked_for():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    same_all = {
        frozenset(p) for p in itertools.combinations(range(6), 2) if labels[p[0]] == labels[p[1]]
    }
    pairs = sample_pairs(labels, n_folds=2, pairs_per_fold=2, seed=0)  # 4 of the 4 same pairs
    same = {
        frozenset(p)
        for p, s in zip(
            zip(pairs.first.tolist(), pairs.second.tolist(), strict=True), pairs.issame, strict=True
        )
        if s
    }
    assert same == same_all


def test_sample_pairs_draws_same_pairs_uniformly():
    """Same pairs are uniform over all same-label pairs: a class gets pairs ∝ C(n_c, 2)."""
    labels = torch.tensor([0] * 10 + [1] * 30)
    pairs = sample_pairs(labels, n_folds=2, pairs_per_fold=100, seed=0)
    counts = Counter(int(labels[a]) for a, s in zip(pairs.first, pairs.issame, strict=True) if s)
    share = counts[1] / (counts[0] + counts[1])
    expected = 435 / (45 + 435)  # C(30, 2) / (C(10, 2) + C(30, 2))
    assert abs(share - expected) < 0.06
    other = sample_pairs(labels, n_folds=2, pairs_per_fold=100, seed=1)
    assert not torch.equal(pairs.first, other.first)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"labels": torch.tensor([0, 1, 2])}, ValueError, "too few for `n_folds`=2"),
        ({"labels": torch.tensor([0.0, 1.0])}, ValueError, "1-D integer tensor"),
        ({"labels": [0, 1]}, TypeError, "torch.Tensor"),
        (
            {"labels": torch.tensor([0, 0, 1, 1]), "n_folds": 1},
            ValueError,
            "`n_folds` must be an int >= 2",
        ),
        (
            {"labels": torch.tensor([0, 0, 1, 1]), "pairs_per_fold": 0},
            ValueError,
            "`pairs_per_fold`",
        ),
    ],
)
def test_sample_pairs_bad_arguments(kwargs, error, match):
    kwargs.setdefault("n_folds", 2)
    with pytest.raises(error, match=match):
        sample_pairs(**kwargs)
