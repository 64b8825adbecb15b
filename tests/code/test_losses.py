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


def test_evidence_loss_learns_the_gold_rows_with_ce_and_every_other_row_bounded():
    """The table's first ``gold_rows`` rows (gold, certain) get -log P; pseudo rows (a one-hot label that may
    be wrong) and vote evidence keep the bounded GCE; rows are told apart by their index in the table."""
    import numpy as np
    from torch import nn

    from weakflow.tasks.core.methods import EvidenceLoss, as_evidence, log_one_hot

    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    table_x = torch.randn(6, 2)
    evidence = torch.as_tensor(np.concatenate([
        log_one_hot(np.array([2, 0]), 3),  # rows 0-1: gold
        log_one_hot(np.array([1]), 3),  # row 2: a pseudo label, as certain-looking as gold
        as_evidence(np.log([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])),  # rows 3-5: votes
    ]))
    rows = torch.tensor([4, 0, 2, 5, 1])  # a shuffled batch: which rows are gold comes from the index
    xb, yb, wb = table_x[rows], evidence[rows], torch.tensor([1.0, 1.0, 0.5, 2.0, 1.0])
    with torch.no_grad():
        log_p = torch.logsumexp(F.log_softmax(model(xb), dim=1) + yb, dim=1)
    gce = (1 - torch.exp(0.7 * log_p)) / 0.7
    expected = torch.where(rows < 2, -log_p, gce)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    got = EvidenceLoss("gce", 0.7, gold_rows=2).step(model, frozen, xb, yb, wb, rows)
    assert got.item() == pytest.approx(((expected * wb).sum() / wb.sum()).item(), rel=1e-5)
    plain = EvidenceLoss("gce", 0.7).step(model, frozen, xb, yb, wb, rows)  # without gold rows: GCE throughout
    assert plain.item() == pytest.approx(((gce * wb).sum() / wb.sum()).item(), rel=1e-5)
    assert abs(got.item() - plain.item()) > 0.05
    with pytest.raises(ValueError, match="row indices"):
        EvidenceLoss("gce", 0.7, gold_rows=2).step(model, frozen, xb, yb, wb)
