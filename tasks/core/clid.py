"""CLID-MU: meta-learning from noisy labels with no clean meta set (arXiv 2507.11807).

CLID (Cross-Layer Information Divergence) compares, on a batch of *unlabeled* rows, the geometry of
the penultimate features with the geometry of the predictions; noisy-label memorisation breaks their
agreement, so CLID works as a label-free meta loss and model-selection signal. This is the project's
own implementation of the method as described in ``shared/reference/clid-mu.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from weakflow.tasks.core.device import autocast
from weakflow.tasks.core.losses import cross_entropy
from weakflow.tasks.core.models import LogitEnsemble


def clid_score(features: torch.Tensor, logits: torch.Tensor, tau: float = 0.5, eps: float = 1e-7) -> torch.Tensor:
    """Mean row-wise cross-entropy H(Q_i, P_i); gradients reach the model through Q only.

    P: softmax over rows of the cosine-similarity matrix of the L2-normalised features divided by
    ``tau``, negative entries set to 0 (kept in the row), diagonal kept; a constant.
    Q: the Gram matrix of the L2-normalised softmax predictions, each row divided by its (detached) sum.
    """
    f = F.normalize(features.float(), dim=1)
    p_embed = F.softmax((f @ f.T / tau).clamp_min(0.0), dim=1).detach()
    p = F.normalize(F.softmax(logits.float(), dim=1), dim=1)
    gram = p @ p.T
    q = gram / gram.sum(dim=1, keepdim=True).detach()
    return (q * -(p_embed + eps).log()).sum(dim=1).mean()


@torch.no_grad()
def mean_clid(model: nn.Module, meta_x: torch.Tensor, batch_size: int, tau: float) -> float:
    """CLID averaged over fixed consecutive batches of the meta set, in eval mode."""
    was_training = model.training
    model.eval()
    scores, sizes = [], []
    for start in range(0, len(meta_x), batch_size):
        xb = meta_x[start : start + batch_size]
        if len(xb) < 2:
            continue
        with autocast(xb.device):
            feats, logits = model(xb, return_features=True)
        scores.append(float(clid_score(feats, logits, tau)))
        sizes.append(len(xb))
    model.train(was_training)
    return float(np.average(scores, weights=sizes)) if scores else float("nan")


class MetaWeightNet(nn.Module):
    """Per-sample loss -> weight in (0, 1): Linear(1, 100), ReLU, Linear(100, 1), sigmoid."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return self.net(losses.view(-1, 1)).view(-1)


@dataclass(frozen=True)
class ClidMuSettings:
    tau: float = 0.5
    meta_lr: float = 1e-4  # Adam; 1e-3 down-weights whole unlearned classes before they are learned
    meta_batch: int = 100
    meta_interval: int = 1  # meta update every k-th step (a cost lever)
    # "head": the virtual step moves only the classifier head (the Linear on the penultimate features),
    # so the meta batch's features come from one no-grad forward: a CLID-MU epoch costs ~2x a CE epoch
    # (~5x with "full", the look-ahead through every parameter) at the same accuracy within seed noise.
    virtual_scope: Literal["full", "head"] = "head"
    virtual_lr: float | None = 0.05  # SGD-scale look-ahead; None: the classifier's current (Adam-scale) rate
    snapshots: int = 3  # ensemble the k epochs with the lowest mean CLID; 1 = single best epoch
    seed: int = 0


class ClidMu:
    """The CLID-MU update rule for :func:`tasks.core.training.fit`.

    Each step: (1) virtual step theta' = theta - lr * grad of the meta-weighted loss (graph kept);
    (2) meta step: CLID of an unlabeled meta batch through the network at theta', back-propagated to
    the weight net only; (3) actual step with weights from the updated weight net (no grad to it).
    ``virtual_scope="head"`` (default) restricts theta' to the classifier head, the body keeping theta
    (the last-layer approximation of fast meta-reweighting); ``"full"`` moves every parameter.
    The rule sees only *features* of the meta set: no label of it can be read.
    """

    own_epochs = True  # select() ensembles the lowest-CLID epochs: every epoch must be trained in step

    def __init__(self, meta_x: torch.Tensor, settings: ClidMuSettings = ClidMuSettings()) -> None:
        if len(meta_x) < 2:
            raise ValueError(f"CLID-MU needs at least 2 unlabeled meta rows, got {len(meta_x)}")
        self.meta_x = meta_x
        self.settings = settings
        self.weight_net = MetaWeightNet().to(meta_x.device)
        self.meta_optimizer = torch.optim.Adam(self.weight_net.parameters(), lr=settings.meta_lr, weight_decay=1e-4)
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        self.steps = 0
        self.meta_steps = 0
        self.snapshots: list[tuple[float, int, dict[str, torch.Tensor]]] = []  # (clid, epoch, state)

    def _meta_batch(self) -> torch.Tensor:
        size = min(self.settings.meta_batch, len(self.meta_x))
        idx = torch.randperm(len(self.meta_x), generator=self.generator)[:size].to(self.meta_x.device)
        return self.meta_x[idx]

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
             wb: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        with autocast(xb.device):
            logits = model(xb)
        cost = cross_entropy(logits.float(), yb)  # per-sample; the weight net's input and the loss to weight
        if self.steps % self.settings.meta_interval == 0:
            self._meta_update(model, optimizer, cost, wb)
        self.steps += 1
        with torch.no_grad():
            v = self.weight_net(cost.detach()) * wb
        loss = (cost * v).sum() / v.sum().clamp_min(1e-8)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def _meta_update(self, model: nn.Module, optimizer: torch.optim.Optimizer, cost: torch.Tensor, wb: torch.Tensor) -> None:
        v = self.weight_net(cost.detach()) * wb
        virtual_loss = (cost * v).sum() / v.sum().clamp_min(1e-8)
        lr = self.settings.virtual_lr or optimizer.param_groups[0]["lr"]
        # A copy of the buffers: the virtual forward must not move BatchNorm running statistics.
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        meta_xb = self._meta_batch()
        if self.settings.virtual_scope == "head":
            feats, meta_logits = self._head_lookahead(model, virtual_loss, lr, buffers, meta_xb)
        else:
            names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
            grads = torch.autograd.grad(virtual_loss, params, create_graph=True, retain_graph=True)
            fast = {n: p - lr * g for n, p, g in zip(names, params, grads)}
            with autocast(meta_xb.device):
                feats, meta_logits = functional_call(model, (fast, buffers), (meta_xb,), {"return_features": True})
        meta_loss = clid_score(feats, meta_logits, self.settings.tau)
        # Gradients of the meta loss go to the weight net only (never into the classifier's .grad).
        meta_grads = torch.autograd.grad(meta_loss, list(self.weight_net.parameters()))
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.weight_net.parameters(), meta_grads):
            p.grad = g
        self.meta_optimizer.step()
        self.meta_steps += 1

    @staticmethod
    def _head_lookahead(model: nn.Module, virtual_loss: torch.Tensor, lr: float, buffers: dict[str, torch.Tensor],
                        meta_xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Virtual step on the head only: (meta features, meta logits through the virtually-moved head).

        The body keeps its parameters, so the meta batch's features need no graph (CLID reads features
        only through the detached embedding similarity); the logits depend on the weight net through
        the head's look-ahead weights alone.
        """
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ValueError("virtual_scope='head' needs a network whose classifier is an nn.Linear `head`")
        grads = torch.autograd.grad(virtual_loss, (head.weight, head.bias), create_graph=True, retain_graph=True)
        weight, bias = head.weight - lr * grads[0], head.bias - lr * grads[1]
        with torch.no_grad(), autocast(meta_xb.device):
            feats, _ = functional_call(model, buffers, (meta_xb,), {"return_features": True})
        feats = feats.float()
        return feats, F.linear(feats, weight, bias)

    def end_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        clid = mean_clid(model, self.meta_x, self.settings.meta_batch, self.settings.tau)
        self.snapshots.append((clid, epoch, copy.deepcopy(model.state_dict())))
        self.snapshots = sorted(self.snapshots, key=lambda s: (s[0], -s[1]))[: self.settings.snapshots]
        return {"clid": clid}

    def select(self, model: nn.Module, history: list) -> nn.Module:
        """Ensemble of the k lowest-CLID epochs (dev labels play no part)."""
        members = []
        for _, _, state in self.snapshots:
            member = copy.deepcopy(model)
            member.load_state_dict(state)
            members.append(member.eval())
        return members[0] if len(members) == 1 else LogitEnsemble(members)

    @property
    def selected_epochs(self) -> list[int]:
        return sorted(epoch for _, epoch, _ in self.snapshots)


class ClidMonitor:
    """Per-epoch mean CLID on a meta set for any method: a label-free model-selection signal."""

    def __init__(self, meta_x: torch.Tensor, batch_size: int = 100, tau: float = 0.5) -> None:
        self.meta_x, self.batch_size, self.tau = meta_x, batch_size, tau

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return {"clid": mean_clid(model, self.meta_x, self.batch_size, self.tau)}
