"""Notebook 05/06's additions to shared modules: utils.data.make_token_sequences, utils.printing.fmt_diff."""

import pytest
import torch
import torch.nn.functional as F

from utils.data import make_token_sequences
from utils.printing import fmt_diff


def test_token_sequences_are_padded_with_minus_100_after_each_length():
    inputs, labels = make_token_sequences(num_sequences=8, max_len=12, num_features=4, vocab_size=5, seed=0)
    assert inputs.shape == (8, 12, 4) and labels.shape == (8, 12)
    assert inputs.dtype == torch.float32 and labels.dtype == torch.int64
    lengths = (labels != -100).sum(dim=1)
    assert ((lengths >= 1) & (lengths <= 12)).all() and len(set(lengths.tolist())) > 2
    for row, length in zip(range(8), lengths.tolist()):
        assert (labels[row, :length] >= 0).all() and (labels[row, :length] < 5).all()
        assert (labels[row, length:] == -100).all() and (inputs[row, length:] == 0).all()
    # the micro-batches of notebook 06 (2 sequences each) hold 13, 7, 12 and 16 real tokens
    assert [int(length) for length in lengths.reshape(4, 2).sum(dim=1)] == [13, 7, 12, 16]


def test_token_sequences_are_seeded_and_cross_entropy_ignores_the_padding():
    first = make_token_sequences(seed=3, dtype=torch.float64)
    second = make_token_sequences(seed=3, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[1], make_token_sequences(seed=4)[1])
    inputs, labels = first
    logits = inputs[..., :3]
    real = labels != -100
    by_mask = F.cross_entropy(logits[real], labels[real].clamp(max=2))
    clamped = torch.where(real, labels.clamp(max=2), labels)
    torch.testing.assert_close(F.cross_entropy(logits.flatten(0, 1), clamped.flatten()), by_mask)


@pytest.mark.parametrize("name, value", [("num_sequences", 0), ("max_len", -1), ("vocab_size", 0)])
def test_token_sequences_bad_sizes(name, value):
    with pytest.raises(ValueError, match=name):
        make_token_sequences(**{name: value})
    with pytest.raises(TypeError, match=name):
        make_token_sequences(**{name: 2.0})


def test_fmt_diff_prints_a_floor_or_two_significant_digits():
    assert fmt_diff(0.0) == "< 1e-10"
    assert fmt_diff(4.4e-16) == "< 1e-10"
    assert fmt_diff(0.8162600270213463) == "0.82"
    assert fmt_diff(0.0473857275836331) == "0.047"
    assert fmt_diff(1.2339) == "1.2"
    assert fmt_diff(3e-7, floor=1e-6) == "< 1e-06"
    assert fmt_diff(3e-5, floor=1e-6) == "3e-05"


@pytest.mark.parametrize("value, floor, error", [
    (torch.tensor(0.5), 1e-10, TypeError), ("0.5", 1e-10, TypeError), (True, 1e-10, TypeError),
    (-0.1, 1e-10, ValueError), (0.1, 0.0, ValueError), (0.1, None, TypeError),
])
def test_fmt_diff_bad_input(value, floor, error):
    with pytest.raises(error, match="expected"):
        fmt_diff(value, floor)
