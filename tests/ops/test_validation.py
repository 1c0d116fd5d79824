"""Bad input to the fused ops: ``TypeError`` for a wrong type, ``ValueError`` for a bad value.

Every message names the argument and what was allowed.
"""

from __future__ import annotations

import re

import pytest
import torch

from marginkit.losses import CombinedMarginLoss
from marginkit.ops import combined_margin, margin_cross_entropy, target_logsumexp

LOGITS = torch.zeros(4, 5)
LABEL = torch.tensor([0, 1, 2, 4])


@pytest.mark.parametrize(
    ("kwargs", "message", "error"),
    [
        (
            {"label": torch.tensor([0, 1, 5, 2])},
            "`label` must be in [0, 5) or equal to `ignore_index` (-100), got 5 at row 2",
            ValueError,
        ),
        ({"label": torch.tensor([0, -1, 2, 2])}, "got -1 at row 1", ValueError),
        (
            {"label": torch.tensor([0, 1, 2, -100]), "ignore_index": -1},
            "got -100 at row 3",
            ValueError,
        ),
        ({"label": torch.tensor([0, 1, 2])}, "`label` must have shape (4,) or (4, 1)", ValueError),
        (
            {"label": torch.zeros(4, 2, dtype=torch.long)},
            "`label` must have shape (4,) or (4, 1)",
            ValueError,
        ),
        ({"label": torch.zeros(4)}, "`label` must be an integer tensor", ValueError),
        (
            {"label": torch.zeros(4, dtype=torch.bool)},
            "`label` must be an integer tensor",
            ValueError,
        ),
        ({"label": [0, 1, 2, 3]}, "`label` must be a torch.Tensor", TypeError),
        ({"logits": torch.zeros(4, 5, 1)}, "`logits` must have shape (N, C)", ValueError),
        (
            {"logits": torch.zeros(4, 5, dtype=torch.int64)},
            "`logits` must be float16, bfloat16",
            ValueError,
        ),
        (
            {"reduction": "avg"},
            "`reduction` must be one of ('mean', 'sum', 'none'), got 'avg'",
            ValueError,
        ),
        ({"margin_fallback": "insightface"}, "`margin_fallback` must be one of", ValueError),
        ({"grad_mode": "approx"}, "`grad_mode` must be one of", ValueError),
        (
            {"impl": "cuda"},
            "`impl` must be one of (None, 'torch', 'triton'), got 'cuda'",
            ValueError,
        ),
        ({"scale": 0.0}, "`scale` must be a finite number > 0, got 0.0", ValueError),
        ({"scale": -64.0}, "`scale` must be a finite number > 0, got -64.0", ValueError),
        ({"scale": float("inf")}, "`scale` must be a finite number > 0", ValueError),
        ({"scale": "64"}, "`scale` must be a real number", TypeError),
        ({"margin1": 0.0}, "`margin1` must be a finite number > 0", ValueError),
        ({"margin2": float("nan")}, "`margin2` must be a finite number", ValueError),
        ({"margin3": None}, "`margin3` must be a real number", TypeError),
        ({"ignore_index": 1.5}, "`ignore_index` must be an int", TypeError),
        ({"return_softmax": 1}, "`return_softmax` must be a bool", TypeError),
        ({"group": "world"}, "`group` must be a torch.distributed ProcessGroup or None", TypeError),
        ({"reduction": None}, "`reduction` must be one of", ValueError),
        ({"reduction": 0}, "`reduction` must be one of", TypeError),
        ({"impl": True}, "`impl` must be one of", TypeError),
        ({"logits": [[0.0] * 5] * 4}, "`logits` must be a torch.Tensor", TypeError),
    ],
)
def test_margin_cross_entropy_bad_input(kwargs, message, error):
    arguments = {"logits": LOGITS, "label": LABEL, **kwargs}
    with pytest.raises(error, match=re.escape(message)) as raised:
        margin_cross_entropy(**arguments)
    assert type(raised.value) is error


def test_label_range_check_survives_reduction_none_and_half_precision():
    with pytest.raises(ValueError, match=re.escape("got 7 at row 0")):
        margin_cross_entropy(LOGITS.half(), torch.tensor([7, 0, 0, 0]), reduction="none")


def test_label_on_another_device_is_rejected():
    label = LABEL.to("meta")
    with pytest.raises(ValueError, match="`label` must be on the device of `logits`"):
        margin_cross_entropy(LOGITS, label)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=re.escape("set TRITON_INTERPRET=1")):
        margin_cross_entropy(LOGITS, LABEL, impl="triton")


@pytest.mark.parametrize(
    ("kwargs", "message", "error"),
    [
        (
            {"label": torch.tensor([0, 1, 5, 2])},
            "`label` must be in [0, 5) or equal to `ignore_index` (-100), got 5 at row 2",
            ValueError,
        ),
        ({"label": torch.tensor([0, 1])}, "`label` must have shape (4,) or (4, 1)", ValueError),
        ({"label": torch.zeros(4)}, "`label` must be an integer tensor", ValueError),
        ({"m1": -1.0}, "`m1` must be a finite number > 0, got -1.0", ValueError),
        ({"m2": float("inf")}, "`m2` must be a finite number", ValueError),
        ({"m3": "0.1"}, "`m3` must be a real number", TypeError),
        ({"margin_fallback": "x"}, "`margin_fallback` must be one of", ValueError),
        ({"grad_mode": "x"}, "`grad_mode` must be one of", ValueError),
        ({"grad_mode": 1}, "`grad_mode` must be one of", TypeError),
        ({"ignore_index": "-100"}, "`ignore_index` must be an int", TypeError),
    ],
)
def test_combined_margin_bad_input(kwargs, message, error):
    arguments = {"logits": LOGITS, "label": LABEL, **kwargs}
    with pytest.raises(error, match=re.escape(message)) as raised:
        combined_margin(**arguments)
    assert type(raised.value) is error


CATEGORIES = {"column_category": torch.tensor([0, 0, 1, 1, 2]), "row_category": LABEL // 2}


@pytest.mark.parametrize(
    ("kwargs", "message", "error"),
    [
        ({"cosines": "x"}, "`cosines` must be a torch.Tensor", TypeError),
        ({"cosines": torch.zeros(4)}, "`cosines` must have shape (N, C)", ValueError),
        ({"label": torch.tensor([0, 1, 2, 5])}, "`label` must be in [0, 5)", ValueError),
        ({"label": torch.tensor([0, 1])}, "to match `cosines` (4, 5)", ValueError),
        ({"scale": -1.0}, "`scale` must be a finite number > 0, got -1.0", ValueError),
        ({"scale": None}, "`scale` must be a real number", TypeError),
        ({"ignore_index": None}, "`ignore_index` must be an int", TypeError),
        ({"row_sum": "yes"}, "`row_sum` must be a bool", TypeError),
        ({"group": 0}, "`group` must be a torch.distributed ProcessGroup or None", TypeError),
        ({"impl": "cuda"}, "`impl` must be one of", ValueError),
        (
            {"row_sum": True, "column_category": CATEGORIES["column_category"]},
            "`column_category` and `row_category` must be given together",
            ValueError,
        ),
        (
            {**CATEGORIES, "row_sum": True, "row_category": [0, 0, 1, 2]},
            "`row_category` must be a torch.Tensor",
            TypeError,
        ),
        (
            {**CATEGORIES, "row_sum": True, "column_category": torch.zeros(5)},
            "`column_category` must be an integer tensor",
            ValueError,
        ),
        (
            {**CATEGORIES, "row_sum": True, "column_category": torch.zeros(4, dtype=torch.long)},
            "`column_category` must have shape (5,), got (4,)",
            ValueError,
        ),
    ],
)
def test_target_logsumexp_bad_input(kwargs, message, error):
    arguments = {"cosines": LOGITS, "label": LABEL, "scale": 64.0, **kwargs}
    with pytest.raises(error, match=re.escape(message)) as raised:
        target_logsumexp(**arguments)
    assert type(raised.value) is error


def test_combined_margin_loss_checks_its_margins_at_construction():
    with pytest.raises(ValueError, match=re.escape("`m1` must be a finite number > 0")):
        CombinedMarginLoss(m1=0.0)
    with pytest.raises(ValueError, match=re.escape("`margin_fallback` must be one of")):
        CombinedMarginLoss(margin_fallback="nope")
