import pytest
import torch
import torch.nn.functional as F

from weakflow.tasks.core.losses import cross_entropy, generalized_cross_entropy, per_sample_loss


def test_ce_matches_torch_and_soft_one_hot():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    y = torch.tensor([0, 1])
    expected = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(cross_entropy(logits, y), expected)
    assert torch.allclose(cross_entropy(logits, F.one_hot(y, 3).float()), expected)


def test_gce_hand_computed_and_limits():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # p_y = 0.5 for class 0
    y = torch.tensor([0])
    assert generalized_cross_entropy(logits, y, q=1.0).item() == pytest.approx(0.5)  # 1 - p_y (MAE-like)
    assert generalized_cross_entropy(logits, y, q=0.5).item() == pytest.approx((1 - 0.5**0.5) / 0.5)
    # q -> 0 recovers cross-entropy: (1 - p^q)/q -> -log p
    assert generalized_cross_entropy(logits, y, q=1e-4).item() == pytest.approx(-torch.log(torch.tensor(0.5)).item(), rel=1e-3)


def test_gce_is_bounded_where_ce_is_not():
    logits = torch.tensor([[30.0, -30.0]])  # confidently wrong for label 1
    y = torch.tensor([1])
    assert generalized_cross_entropy(logits, y, q=0.7).item() <= 1 / 0.7 + 1e-6
    assert cross_entropy(logits, y).item() > 50


def test_unknown_loss_and_bad_q_raise():
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        per_sample_loss("mse", torch.zeros(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="q must be in"):
        generalized_cross_entropy(torch.zeros(1, 2), torch.tensor([0]), q=0.0)
