"""CLID and CLID-MU: the score by hand, where gradients may flow, and that meta labels are never read."""

import math

import numpy as np
import pytest
import torch

from weakflow.tasks.core.clid import ClidMu, ClidMuSettings, MetaWeightNet, clid_score, mean_clid
from weakflow.tasks.core.losses import cross_entropy
from weakflow.tasks.core.models import LogitEnsemble, ModelSpec, build_model
from weakflow.tasks.core.noise import corrupt_labels
from weakflow.tasks.core.training import TrainSettings, fit


def hand_clid() -> float:
    """Two rows, tau = 0.5. Features (1,0),(0,1): cosine [[1,0],[0,1]] / 0.5 -> [[2,0],[0,2]];
    P row = softmax(2, 0) = (e^2, 1)/(e^2 + 1). Predictions p1 = (.75,.25), p2 = (.25,.75): after L2
    normalisation their dot product is 2*.75*.25/(.75^2+.25^2) = 0.6, so Q row = (1, .6)/1.6."""
    p_self = math.exp(2) / (math.exp(2) + 1)
    p_other = 1 / (math.exp(2) + 1)
    q_self, q_other = 1 / 1.6, 0.6 / 1.6
    return q_self * -math.log(p_self + 1e-7) + q_other * -math.log(p_other + 1e-7)


LOGITS = torch.log(torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


def test_clid_matches_hand_computation():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert clid_score(features, LOGITS, tau=0.5).item() == pytest.approx(hand_clid(), rel=1e-5)


def test_negative_similarities_are_zeroed_not_dropped():
    # (1,0) and (-1,0): cosine -1 -> -2 after tau; set to 0, so P equals the orthogonal case above.
    # Without the clamp the off-diagonal P would be softmax(2, -2) and CLID would be much larger.
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert clid_score(features, LOGITS, tau=0.5).item() == pytest.approx(hand_clid(), rel=1e-5)


def test_gradients_reach_predictions_only():
    features = torch.randn(6, 4, requires_grad=True)
    logits = torch.randn(6, 3, requires_grad=True)
    clid_score(features, logits).backward()
    assert features.grad is None or torch.count_nonzero(features.grad) == 0
    assert logits.grad is not None and torch.count_nonzero(logits.grad) > 0


def test_mean_clid_weights_batches_by_size():
    model = build_model(ModelSpec("mlp", 4, 3, hidden=(8,)))
    x = torch.randn(250, 4)
    value = mean_clid(model, x, batch_size=100, tau=0.5)
    model.eval()
    with torch.no_grad():
        parts = [(clid_score(*model(x[s:s + 100], return_features=True)).item(), len(x[s:s + 100])) for s in (0, 100, 200)]
    assert value == pytest.approx(sum(v * n for v, n in parts) / 250, rel=1e-5)


def blobs(n=600, noise=0.4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 6)) + np.eye(3, 6)[y] * 3).astype(np.float32)
    return x, y, corrupt_labels(y, 3, noise, "symmetric", seed)


@pytest.mark.parametrize("scope", ["full", "head"])
def test_weight_net_gets_gradients_only_from_the_meta_loss(scope):
    x, _, noisy = blobs(64)
    model = build_model(ModelSpec("mlp", 6, 3, hidden=(16,)))
    rule = ClidMu(torch.as_tensor(x[:32]), ClidMuSettings(meta_batch=16, virtual_scope=scope))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meta_before = [p.detach().clone() for p in rule.weight_net.parameters()]
    seen: list[str] = []
    original = rule._meta_update

    def spy(*args):
        original(*args)
        seen.append("meta")
        # after the meta step the weight net holds exactly the meta-loss gradients...
        assert all(p.grad is not None for p in rule.weight_net.parameters())
        spy.meta_grads = [p.grad.clone() for p in rule.weight_net.parameters()]
        # ...and the classifier has no gradient from it
        assert all(p.grad is None for p in model.parameters())

    rule._meta_update = spy
    rule.step(model, optimizer, torch.as_tensor(x[32:]), torch.as_tensor(noisy[32:]), torch.ones(32))
    assert seen == ["meta"]
    # the actual step added nothing to the weight net's gradients and left its weights as the meta step did
    assert all(torch.equal(p.grad, g) for p, g in zip(rule.weight_net.parameters(), spy.meta_grads))
    assert any(not torch.equal(a, b) for a, b in zip(meta_before, rule.weight_net.parameters()))
    assert all(p.grad is not None for p in model.parameters())  # the classifier learned from the actual loss


@pytest.mark.parametrize("scope", ["full", "head"])
def test_clid_mu_output_does_not_depend_on_the_dev_labels(scope):
    """CLID picks the snapshots and the meta-weights from unlabeled features only: with the dev labels
    permuted the trained network is the same, to the bit (the dev split is only reported)."""
    x, y, noisy = blobs(600)
    meta = torch.as_tensor(x[300:500])

    def train(y_dev: np.ndarray):
        torch.manual_seed(0)  # the same initial weights both times
        model = build_model(ModelSpec("mlp", 6, 3, hidden=(16,)))
        model.scale.fit(x)
        rule = ClidMu(meta, ClidMuSettings(meta_batch=50, virtual_scope=scope, snapshots=2))
        return fit(model, x[:300], noisy[:300], TrainSettings(epochs=4, batch_size=50), x_dev=x[500:], y_dev=y_dev,
                   rule=rule)

    true_dev = y[500:]
    a, b = train(true_dev), train(np.random.default_rng(1).permutation(true_dev))
    assert [h.dev_accuracy for h in a.history] != [h.dev_accuracy for h in b.history]  # the labels did differ
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_the_meta_set_holds_no_gold_row():
    import pandas as pd

    from weakflow.tasks.lib.config import FilesData
    from weakflow.tasks.lib.data import FOLD, PipelineData
    from weakflow.tasks.lib.weak_methods import meta_features

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 2)), columns=["a", "b"])
    frame.loc[:99, "a"] = 1000.0 + np.arange(100)  # gold rows carry a marker no other row has
    frame["provenance"] = ["gold"] * 100 + ["weak"] * 100 + ["unlabeled"] * 100
    frame["split"], frame[FOLD], frame["row_id"] = frame["provenance"], -1, np.arange(300)
    spec = FilesData(train_path="t.csv", test_path="s.csv", feature_columns=["a", "b"])
    data = PipelineData(frame, frame.head(0), spec, [0, 1])
    meta = meta_features(data, size=1000, seed=0)
    assert len(meta) == 200 and (meta[:, 0] < 1000).all()  # every non-gold row, no gold row


@pytest.mark.parametrize("scope", ["full", "head"])
def test_clid_mu_learns_to_down_weight_noisy_labels_and_ensembles_snapshots(scope):
    x, y, noisy = blobs(900, noise=0.4)
    meta = torch.as_tensor(x[600:])
    model = build_model(ModelSpec("mlp", 6, 3, hidden=(32,)))
    model.scale.fit(x)
    # easy blobs: learn fast
    rule = ClidMu(meta, ClidMuSettings(meta_batch=100, snapshots=3, meta_lr=1e-3, virtual_scope=scope))
    res = fit(model, x[:600], noisy[:600], TrainSettings(epochs=15, batch_size=64, lr=3e-3), rule=rule)
    from weakflow.tasks.core.losses import cross_entropy

    res.model.eval()
    with torch.no_grad():
        cost = cross_entropy(res.model(torch.as_tensor(x[:600])), torch.as_tensor(noisy[:600]))
        w = rule.weight_net(cost).numpy()
    wrong = noisy[:600] != y[:600]
    assert w[~wrong].mean() > 2 * w[wrong].mean()
    assert isinstance(res.model, LogitEnsemble) and len(res.model.members) == 3
    assert rule.selected_epochs == sorted(e for _, e, _ in rule.snapshots)
    clids = [h.extra["clid"] for h in res.history]
    assert sorted(clids)[:3] == pytest.approx(sorted(c for c, _, _ in rule.snapshots))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_head_only_virtual_step_moves_the_head_alone(kind):
    """virtual_scope='head': the look-ahead differentiates the head only; the body's parameters, their
    .grad and the BatchNorm statistics are untouched by the meta step, and the weight net still learns."""
    torch.manual_seed(0)
    spec = (ModelSpec("cnn", 64, 3, hidden=(8,), image_shape=(1, 8, 8)) if kind == "cnn"
            else ModelSpec("mlp", 6, 3, hidden=(16,)))
    x = torch.randn(48, spec.num_features)
    y = torch.randint(0, 3, (48,))
    model = build_model(spec).train()
    rule = ClidMu(x[32:], ClidMuSettings(meta_batch=16, virtual_scope="head"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cost = cross_entropy(model(x[:32]), y[:32])  # the training forward (moves BatchNorm statistics itself)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    fast_seen: dict[str, torch.Tensor] = {}
    original = rule._head_lookahead

    def spy(model_, virtual_loss, lr, buffers, meta_xb):
        feats, logits = original(model_, virtual_loss, lr, buffers, meta_xb)
        assert not feats.requires_grad  # no graph through the body on the meta batch
        assert logits.requires_grad  # the meta loss reaches the weight net through the head's look-ahead
        fast_seen["logits"] = logits.detach()
        fast_seen["plain"] = model_.head(feats).detach()
        return feats, logits

    rule._head_lookahead = spy
    rule._meta_update(model, optimizer, cost, torch.ones(32))
    # the meta step changed nothing in the classifier: parameters, buffers (BatchNorm statistics), .grad
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None for p in model.parameters())
    # the look-ahead did move the head (logits differ from the current head's) ...
    assert not torch.allclose(fast_seen["logits"], fast_seen["plain"])
    # ... and the weight net got a nonzero gradient from the meta loss and moved
    assert all(p.grad is not None for p in rule.weight_net.parameters())
    assert any(torch.count_nonzero(p.grad) > 0 for p in rule.weight_net.parameters())
    assert rule.meta_steps == 1


def test_head_only_virtual_step_matches_the_full_one_when_only_the_head_trains():
    """With the body frozen (requires_grad False) the full look-ahead moves the head alone too, so both
    scopes give the weight net the same meta gradient."""
    x, _, noisy = blobs(64)
    grads = {}
    for scope in ("full", "head"):
        torch.manual_seed(0)
        model = build_model(ModelSpec("mlp", 6, 3, hidden=(16,)))
        model.eval()  # no dropout / batch statistics: the two forwards see the same network
        for p in model.body.parameters():
            p.requires_grad_(False)
        torch.manual_seed(1)
        rule = ClidMu(torch.as_tensor(x[:32]), ClidMuSettings(meta_batch=16, virtual_scope=scope))
        cost = cross_entropy(model(torch.as_tensor(x[32:])), torch.as_tensor(noisy[32:]))
        rule._meta_update(model, torch.optim.SGD(model.parameters(), lr=0.1), cost, torch.ones(32))
        grads[scope] = [p.grad.clone() for p in rule.weight_net.parameters()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads["full"], grads["head"]))


def test_meta_weight_net_shape_and_range():
    w = MetaWeightNet()(torch.tensor([0.1, 2.0, 9.0]))
    assert w.shape == (3,) and bool(((w > 0) & (w < 1)).all())
