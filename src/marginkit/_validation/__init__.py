"""Argument checks shared by the ops, the losses, the miners, the metrics and the data modules.

One home, one error type per mistake. A wrong *type* raises ``TypeError``, a bad *value* ``ValueError``; every message names the
argument and what was allowed.

Two kinds, kept apart on purpose:

* **static** checks (:func:`check_static_arguments`): types, shapes, dtypes, devices and option
  strings. They read metadata only, never tensor data, so they cost nothing on the device, run
  in the Python wrappers, and ``torch.compile`` traces through them without a graph break.
* the **data-dependent** checks (:func:`check_label_range`, :func:`check_finite_rows`,
  :func:`check_labels_and_finite_rows` for the heads): O(N) work and one device-to-host read of
  a single boolean each (a sync on CUDA; the label range runs inside the op kernels, opaque to
  ``torch.compile``); only on failure do they look further, to name the value and its row.

The modules: :mod:`~marginkit._validation.arguments` (options, numbers, margins),
:mod:`~marginkit._validation.tensors` (tensors, labels, finiteness, a head's inputs),
:mod:`~marginkit._validation.metrics` (the metrics' arguments and inputs),
:mod:`~marginkit._validation.config` (the data modules' settings). Import from the package.
"""

from __future__ import annotations

from marginkit._validation.arguments import (
    IMPLS,
    REDUCTIONS,
    check_arcface_fallback,
    check_bool,
    check_finite_number,
    check_ignore_index,
    check_margin,
    check_margins,
    check_memory_efficient,
    check_nonnegative,
    check_option,
    check_positive_int,
    check_process_group,
    check_scale,
)
from marginkit._validation.config import (
    EVAL_STAGES,
    check_fraction,
    check_int_at_least,
    check_stage,
)
from marginkit._validation.metrics import (
    check_choice,
    check_chunking,
    check_embedding_matrix,
    check_far_targets,
    check_flags,
    check_issame,
    check_label_vector,
    check_metric_names,
    check_n_folds,
    check_top_k,
)
from marginkit._validation.tensors import (
    LOGIT_DTYPES,
    check_categories,
    check_embeddings,
    check_embeddings_weight_and_label,
    check_features_and_labels,
    check_finite_rows,
    check_float_dtype,
    check_floating_matrix,
    check_head_inputs,
    check_label_range,
    check_labels,
    check_labels_and_finite_rows,
    check_logits_and_label,
    check_row_labels,
    check_same_device,
    check_tensor,
)

__all__ = [
    "EVAL_STAGES",
    "IMPLS",
    "LOGIT_DTYPES",
    "REDUCTIONS",
    "check_arcface_fallback",
    "check_bool",
    "check_categories",
    "check_choice",
    "check_chunking",
    "check_embedding_matrix",
    "check_embeddings",
    "check_embeddings_weight_and_label",
    "check_far_targets",
    "check_features_and_labels",
    "check_finite_number",
    "check_finite_rows",
    "check_flags",
    "check_float_dtype",
    "check_floating_matrix",
    "check_fraction",
    "check_head_inputs",
    "check_ignore_index",
    "check_int_at_least",
    "check_issame",
    "check_label_range",
    "check_label_vector",
    "check_labels",
    "check_labels_and_finite_rows",
    "check_logits_and_label",
    "check_margin",
    "check_margins",
    "check_memory_efficient",
    "check_metric_names",
    "check_n_folds",
    "check_nonnegative",
    "check_option",
    "check_positive_int",
    "check_process_group",
    "check_row_labels",
    "check_same_device",
    "check_scale",
    "check_stage",
    "check_tensor",
    "check_top_k",
]
