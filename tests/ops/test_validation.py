"""Bad input to the fused ops raises ``ValueError`` naming the argument and the problem."""

from __future__ import annotations

import re

import pytest
import torch

from marginkit.losses import CombinedMarginLoss
from marginkit.ops import combined_margin, margin_cross_entropy

LOGITS = torch.zeros(4, 5)
LABEL = torch.tensor([0, 1, 2, 4])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"label": torch.tensor([0, 1, 5, 2])},
            "`label` must be in [0, 5) or equal to `ignore_index` (-100), got 5 at row 2",
        ),
        ({"label": torch.tensor([0, -1, 2, 2])}, "got -1 at row 1"),
        ({"label": torch.tensor([0, 1, 2, -100]), "ignore_index": -1}, "got -100 at row 3"),
        ({"label": torch.tensor([0, 1, 2])}, "`label` must have shape (4,) or (4, 1)"),
        ({"label": torch.zeros(4, 2, dtype=torch.long)}, "`label` must have shape (4,) or (4, 1)"),
        ({"label": torch.zeros(4)}, "`label` must be an integer tensor"),
        ({"label": torch.zeros(4, dtype=torch.bool)}, "`label` must be an integer tensor"),
        ({"label": [0, 1, 2, 3]}, "`label` must be a torch.Tensor"),
        ({"logits": torch.zeros(4, 5, 1)}, "`logits` must have shape (N, C)"),
        ({"logits": torch.zeros(4, 5, dtype=torch.int64)}, "`logits` must be float16, bfloat16"),
        ({"reduction": "avg"}, "`reduction` must be one of ('mean', 'sum', 'none'), got 'avg'"),
        ({"margin_fallback": "insightface"}, "`margin_fallback` must be one of"),
        ({"grad_mode": "approx"}, "`grad_mode` must be one of"),
        ({"impl": "cuda"}, "`impl` must be one of (None, 'torch', 'triton'), got 'cuda'"),
        ({"scale": 0.0}, "`scale` must be a finite number > 0, got 0.0"),
        ({"scale": -64.0}, "`scale` must be a finite number > 0, got -64.0"),
        ({"scale": float("inf")}, "`scale` must be a finite number > 0"),
        ({"scale": "64"}, "`scale` must be a real number"),
        ({"margin1": 0.0}, "`margin1` must be a finite number > 0"),
        ({"margin2": float("nan")}, "`margin2` must be a finite number"),
        ({"margin3": None}, "`margin3` must be a real number"),
        ({"ignore_index": 1.5}, "`ignore_index` must be an int"),
        ({"return_softmax": 1}, "`return_softmax` must be a bool"),
        ({"group": "world"}, "`group` must be a torch.distributed ProcessGroup or None"),
    ],
)
def test_margin_cross_entropy_bad_input(kwargs, message):
    arguments = {"logits": LOGITS, "label": LABEL, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        margin_cross_entropy(**arguments)


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
    ("kwargs", "message"),
    [
        (
            {"label": torch.tensor([0, 1, 5, 2])},
            "`label` must be in [0, 5) or equal to `ignore_index` (-100), got 5 at row 2",
        ),
        ({"label": torch.tensor([0, 1])}, "`label` must have shape (4,) or (4, 1)"),
        ({"label": torch.zeros(4)}, "`label` must be an integer tensor"),
        ({"m1": -1.0}, "`m1` must be a finite number > 0, got -1.0"),
        ({"m2": float("inf")}, "`m2` must be a finite number"),
        ({"margin_fallback": "x"}, "`margin_fallback` must be one of"),
        ({"grad_mode": "x"}, "`grad_mode` must be one of"),
    ],
)
def test_combined_margin_bad_input(kwargs, message):
    arguments = {"logits": LOGITS, "label": LABEL, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        combined_margin(**arguments)


def test_combined_margin_loss_checks_its_margins_at_construction():
    with pytest.raises(ValueError, match=re.escape("`m1` must be a finite number > 0")):
        CombinedMarginLoss(m1=0.0)
    with pytest.raises(ValueError, match=re.escape("`margin_fallback` must be one of")):
        CombinedMarginLoss(margin_fallback="nope")
