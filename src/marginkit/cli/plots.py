"""``eval.py plot=true``: the evaluation's pictures, written as PNGs beside ``metrics.json``.

* ``retrieval.png``: queries of the split and their top-k (:func:`marginkit.metrics.plot_retrieval`),
  when the split's items are images (or flat squares, like the digits);
* ``cmc.png``: CMC@k for k = 1..20 (:meth:`marginkit.metrics.RetrievalMetrics.plot`);
* ``roc.png``: the ROC of the pair list with the FAR targets marked
  (:meth:`marginkit.metrics.VerificationMetrics.plot`), when the data has a pair list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RETRIEVAL_PNG, CMC_PNG, ROC_PNG = "retrieval.png", "cmc.png", "roc.png"
CMC_MAX_K = 20


def _split_dataset(datamodule: Any, split: str) -> Any:
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    return loader.dataset


def write_plots(
    output_dir: str | Path,
    items: Any,
    datamodule: Any,
    split: str,
    pairs: Any | None,
    far_targets: Sequence[float],
    seed: int = 0,
    queries: int = 8,
    k: int = 5,
) -> list[Path]:
    """Write the PNGs of one evaluated split into ``output_dir``; return the paths written.

    ``items`` holds ``embeddings``, ``labels`` and ``indices`` (``embeddings[i]`` is the item
    ``indices[i]`` of the split's dataset, whose items start with the input tensor), like the
    CLI's split embeddings; ``pairs`` is the split's pair list (None: no ROC).
    """
    embeddings, labels, indices = items.embeddings, items.labels, items.indices
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from marginkit.metrics import RetrievalMetrics, VerificationMetrics, plot_retrieval
    from marginkit.models.evaluation import pair_scores

    output_dir = Path(output_dir)
    written = []
    dataset = _split_dataset(datamodule, split)
    try:
        images = [dataset[index][0] for index in indices.tolist()]
        fig, _ = plot_retrieval(
            embeddings, labels, images, queries=queries, k=min(k, len(labels) - 1), seed=seed
        )
    except (ValueError, TypeError, IndexError) as error:
        log.info("plot: no retrieval picture (%s)", error)
    else:
        fig.savefig(output_dir / RETRIEVAL_PNG, dpi=100)
        plt.close(fig)
        written.append(output_dir / RETRIEVAL_PNG)

    top_k = tuple(range(1, min(CMC_MAX_K, len(labels) - 1) + 1))
    retrieval = RetrievalMetrics(top_k=top_k, metrics=("cmc",))
    retrieval.update(embeddings, labels)
    fig, _ = retrieval.plot()
    fig.savefig(output_dir / CMC_PNG, dpi=100)
    plt.close(fig)
    written.append(output_dir / CMC_PNG)

    if pairs is not None:
        scores, issame, n_folds = pair_scores(embeddings, pairs, indices)
        if len(scores) and bool(issame.any()) and not bool(issame.all()):
            verification = VerificationMetrics(far_targets=tuple(far_targets), n_folds=n_folds)
            verification.update_scores(scores, issame)
            fig, _ = verification.plot()
            fig.savefig(output_dir / ROC_PNG, dpi=100)
            plt.close(fig)
            written.append(output_dir / ROC_PNG)
    for path in written:
        log.info("plot written to %s", path)
    return written
