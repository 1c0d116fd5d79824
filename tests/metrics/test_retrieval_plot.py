"""plot_retrieval / nearest_items against a brute-force ranking."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from marginkit.metrics import nearest_items, plot_retrieval

matplotlib.use("Agg")


def _brute_force(query, gallery, k, leave_one_out):
    q = torch.nn.functional.normalize(query.double(), dim=1).numpy()
    g = torch.nn.functional.normalize(gallery.double(), dim=1).numpy()
    rows = []
    for i, vector in enumerate(q):
        scores = g @ vector
        candidates = [j for j in range(len(g)) if not (leave_one_out and j == i)]
        rows.append(sorted(candidates, key=lambda j: (-scores[j], j))[:k])
    return rows


@pytest.mark.parametrize("with_gallery", [False, True])
def test_nearest_items_match_brute_force(with_gallery):
    query = torch.randn(30, 5)
    gallery = torch.randn(40, 5) if with_gallery else None
    found = nearest_items(query, gallery, k=4).tolist()
    assert found == _brute_force(query, query if gallery is None else gallery, 4, not with_gallery)


def test_ties_go_to_the_lower_index():
    query = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest_items(query, k=2).tolist()[2] == [0, 1]


def test_the_grid_marks_right_and_wrong_neighbours():
    embeddings = torch.randn(20, 3)
    labels = torch.randint(0, 4, (20,))
    images = torch.rand(20, 1, 6, 6)
    fig, axes = plot_retrieval(embeddings, labels, images, queries=[2, 7, 11], k=3)
    expected = _brute_force(embeddings, embeddings, 3, True)
    assert axes.shape == (3, 4)
    for line, row in enumerate([2, 7, 11]):
        assert axes[line, 0].get_title() == f"query: {labels[row].item()}"
        for rank, item in enumerate(expected[row], start=1):
            colour = axes[line, rank].spines["top"].get_edgecolor()
            right = labels[item] == labels[row]
            want = matplotlib.colors.to_rgba("tab:green" if right else "tab:red")
            assert np.allclose(colour, want)
            assert axes[line, rank].get_title() == f"{rank}: {labels[item].item()}"
    matplotlib.pyplot.close(fig)


def test_a_separate_gallery_and_flat_square_images():
    fig, axes = plot_retrieval(
        torch.randn(5, 3),
        torch.arange(5),
        torch.rand(5, 16),
        gallery_embeddings=torch.randn(9, 3),
        gallery_labels=torch.arange(9) % 5,
        gallery_images=[torch.rand(3, 4, 4) for _ in range(9)],
        queries=2,
        k=2,
    )
    assert axes.shape == (2, 3)
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 20}, "`k`"),
        ({"queries": [25]}, "`queries`"),
        ({"queries": 0}, "`queries`"),
        ({"images": torch.rand(3, 1, 4, 4)}, "`images`"),
        ({"images": torch.rand(20, 7)}, "`images`"),
        ({"gallery_labels": torch.arange(20)}, "`gallery_labels`"),
        ({"distance": "dot"}, "`distance`"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, message):
    arguments = {
        "embeddings": torch.randn(20, 3),
        "labels": torch.arange(20) % 4,
        "images": torch.rand(20, 1, 4, 4),
        "queries": 2,
        "k": 3,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        plot_retrieval(**arguments)
