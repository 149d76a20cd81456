"""utils.printing: rounded output that is the same on every machine."""

import pytest
import torch

from utils.printing import fmt, rounded


def test_rounds_numbers_and_tensors():
    assert rounded(1.23456) == 1.2346
    assert rounded(torch.tensor([[1.23456], [2.0]])) == [1.2346, 2.0]
    assert rounded(torch.tensor(3.14159), 2) == 3.14


def test_no_negative_zero():
    assert fmt(-0.00001) == "0.0000"
    assert fmt(torch.tensor([-1e-9, -0.5])) == "[0.0000, -0.5000]"


def test_last_digits_do_not_show():
    a = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32)
    assert fmt(a.sum()) == fmt(torch.tensor(0.6, dtype=torch.float64))


@pytest.mark.parametrize("value, error", [("1.0", TypeError), (True, TypeError), (torch.tensor([1j]), TypeError)])
def test_bad_value_is_a_clear_error(value, error):
    with pytest.raises(error, match="expected a"):
        rounded(value)


def test_bad_digits_is_a_clear_error():
    with pytest.raises(ValueError, match="digits as an int >= 0"):
        fmt(1.0, digits=-1)
