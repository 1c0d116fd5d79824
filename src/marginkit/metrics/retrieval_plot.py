"""Pictures of retrieval: queries and their nearest gallery items, right and wrong marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from marginkit.metrics._plot import import_pyplot
from marginkit.metrics.functional._knn import exact_neighbours, prepare_embeddings
from marginkit.metrics.functional.retrieval import _check_distance

RIGHT_COLOUR = "tab:green"
WRONG_COLOUR = "tab:red"


def _display_array(image: Any) -> np.ndarray:
    """One image as an (H, W) or (H, W, 3) float array in [0, 1] for ``imshow``.

    Accepts (C, H, W) or (H, W) tensors/arrays (C in 1, 3), (H, W, C) arrays and Pillow images;
    a flat vector of a square number of values is shown as a square. Each image is stretched
    to its own minimum and maximum (inputs are usually normalised).
    """
    array = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image, np.float64)
    if array.ndim == 1:
        side = round(array.size**0.5)
        if side * side != array.size:
            raise ValueError(
                f"`images` must be images (or flat squares), got a vector of {array.size} values"
            )
        array = array.reshape(side, side)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"`images` must hold 2-D or 3-D images, got shape {array.shape}")
    low, high = array.min(), array.max()
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def nearest_items(
    query: Tensor,
    gallery: Tensor | None = None,
    k: int = 5,
    distance: str = "cosine",
) -> Tensor:
    """The (Q, k) gallery indices of each query's ``k`` nearest items, nearest first.

    The order of :class:`~marginkit.metrics.RetrievalMetrics` (larger cosine, or smaller
    euclidean distance, first; equal scores by the lower gallery index). Without ``gallery``
    the search is leave-one-out within ``query`` (an item never retrieves itself).

    Example:
        >>> points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> nearest_items(points, k=2).tolist()
        [[1, 2], [0, 2], [1, 0]]
    """
    distance = _check_distance(distance)
    leave_one_out = gallery is None
    gallery = query if gallery is None else gallery
    if k < 1 or k > gallery.shape[0] - int(leave_one_out):
        raise ValueError(
            f"`k` must be in [1, {gallery.shape[0] - int(leave_one_out)}] (the gallery size), "
            f"got {k}"
        )
    own = torch.arange(query.shape[0]) if leave_one_out else torch.full((query.shape[0],), -1)
    return _neighbours(query, gallery, own, k, distance)


def _neighbours(query: Tensor, gallery: Tensor, own: Tensor, k: int, distance: str) -> Tensor:
    """(Q, k) nearest gallery indices; query ``i`` is gallery item ``own[i]`` (-1: none)."""
    prepared_query = prepare_embeddings(query, distance)
    prepared_gallery = prepare_embeddings(gallery, distance)
    device = query.device
    neighbours = torch.empty(query.shape[0], k, dtype=torch.long, device=device)
    for rows, found in exact_neighbours(
        prepared_query,
        prepared_gallery,
        own.to(device),
        torch.full((query.shape[0],), k, device=device),
        distance,
        None,
        64 * 2**20,
    ):
        neighbours[rows] = found[:, :k]
    return neighbours


def plot_retrieval(
    embeddings: Tensor,
    labels: Tensor,
    images: Sequence[Any] | Tensor,
    gallery_embeddings: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    gallery_images: Sequence[Any] | Tensor | None = None,
    queries: int | Sequence[int] = 8,
    k: int = 5,
    distance: str = "cosine",
    seed: int = 0,
    image_size: float = 1.3,
) -> tuple[Any, np.ndarray]:
    """A grid of queries (one row each) and their top-``k`` gallery items, right/wrong marked.

    Column 0 is the query (its label above it); columns 1..k are its nearest gallery items in
    the order of :func:`nearest_items`, each framed green when its label equals the query's and
    red otherwise, titled with the rank and the label. Without a gallery the search is
    leave-one-out within the queries (like :class:`~marginkit.metrics.RetrievalMetrics` without
    flags). Like OML's ``RetrievalResults.visualize``.

    Args:
        embeddings: (N, D) query embeddings.
        labels: (N,) query labels.
        images: the N query images: a (N, C, H, W) or (N, H, W) tensor or array, or a sequence
            of images (tensors, arrays, Pillow images); each is min-max stretched for display.
        gallery_embeddings: (G, D) gallery embeddings; None: leave-one-out over the queries.
        gallery_labels: (G,) gallery labels (with ``gallery_embeddings``).
        gallery_images: the G gallery images (with ``gallery_embeddings``).
        queries: the query rows to show, or how many to draw at random with ``seed``.
        k: neighbours per query.
        distance: ``"cosine"`` or ``"euclidean"``.
        seed: seed of the random choice of queries.
        image_size: inches per image in the figure.

    Returns:
        ``(fig, axes)``: the figure and its (rows, k + 1) array of axes.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> fig, axes = plot_retrieval(embeddings, torch.tensor([0, 0, 1, 1]),
        ...                            torch.rand(4, 1, 8, 8), queries=[0, 2], k=2)
        >>> axes.shape, axes[0, 1].get_title()
        ((2, 3), '1: 0')
    """
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if embeddings.ndim != 2 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`embeddings` must be (N, D) with N = len(labels) = {labels.shape[0]}, got "
            f"{tuple(embeddings.shape)}"
        )
    if len(images) != labels.shape[0]:
        raise ValueError(f"`images` must hold {labels.shape[0]} images, got {len(images)}")
    if gallery_embeddings is None:
        if gallery_labels is not None or gallery_images is not None:
            raise ValueError("`gallery_labels` and `gallery_images` need `gallery_embeddings`")
        gallery_labels, gallery_images = labels, images
    else:
        if gallery_labels is None or gallery_images is None:
            raise ValueError("`gallery_embeddings` needs `gallery_labels` and `gallery_images`")
        gallery_labels = torch.as_tensor(gallery_labels).reshape(-1).cpu()
        if len(gallery_images) != gallery_labels.shape[0] or gallery_embeddings.shape[0] != len(
            gallery_labels
        ):
            raise ValueError(
                f"`gallery_embeddings`, `gallery_labels` and `gallery_images` must have one "
                f"length, got {gallery_embeddings.shape[0]}, {len(gallery_labels)} and "
                f"{len(gallery_images)}"
            )
    if isinstance(queries, int) and not isinstance(queries, bool):
        if queries < 1:
            raise ValueError(f"`queries` must be a positive count or a list of rows, got {queries}")
        generator = torch.Generator().manual_seed(seed)
        count = min(queries, labels.shape[0])
        rows = torch.randperm(labels.shape[0], generator=generator)[:count].sort().values.tolist()
    else:
        rows = [int(row) for row in queries]
        bad = [row for row in rows if not 0 <= row < labels.shape[0]]
        if not rows or bad:
            raise ValueError(
                f"`queries` must be rows in [0, {labels.shape[0]}), got {list(queries)}"
            )
    distance = _check_distance(distance)
    chosen = torch.as_tensor(rows)
    gallery = embeddings if gallery_embeddings is None else gallery_embeddings
    limit = gallery.shape[0] - int(gallery_embeddings is None)
    if not 1 <= k <= limit:
        raise ValueError(f"`k` must be in [1, {limit}] (the gallery size), got {k}")
    own = chosen if gallery_embeddings is None else torch.full_like(chosen, -1)
    query = embeddings[chosen.to(embeddings.device)]
    neighbours = _neighbours(query, gallery, own, k, distance).cpu()

    plt = import_pyplot()
    fig, axes = plt.subplots(
        len(rows),
        k + 1,
        figsize=(image_size * (k + 1), image_size * 1.15 * len(rows)),
        squeeze=False,
    )
    for line, (row, found) in enumerate(zip(rows, neighbours.tolist(), strict=True)):
        _show(axes[line, 0], images[row], f"query: {labels[row].item()}", "black")
        for rank, item in enumerate(found, start=1):
            right = gallery_labels[item].item() == labels[row].item()
            colour = RIGHT_COLOUR if right else WRONG_COLOUR
            _show(
                axes[line, rank],
                gallery_images[item],
                f"{rank}: {gallery_labels[item].item()}",
                colour,
            )
    fig.tight_layout()
    return fig, axes


def _show(ax: Any, image: Any, title: str, colour: str) -> None:
    array = _display_array(image)
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, color=colour)
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3 if colour != "black" else 1)
