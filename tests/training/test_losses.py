"""Loss terms against hand-computed small cases (CLIF InfoNCE, CustomContrast reconstruction)."""

from __future__ import annotations

import math

import pytest
import torch

from clif_serve.training.customcontrast import cross_sample_loss, weighted_negative_nce
from clif_serve.training.losses import group_targets, symmetric_info_nce


def _log_softmax_row(values, index):
    return values[index] - math.log(sum(math.exp(v) for v in values))


def test_symmetric_info_nce_matches_hand_computation():
    # Unit vectors, so the logits are scale * cosine.
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    scale = 10.0
    cos = [[0.8, 0.0], [0.48 + 0.48, 0.8]]  # image i . text j
    logits = [[scale * c for c in row] for row in cos]
    image_to_text = -(_log_softmax_row(logits[0], 0) + _log_softmax_row(logits[1], 1)) / 2
    columns = [[logits[0][0], logits[1][0]], [logits[0][1], logits[1][1]]]
    text_to_image = -(_log_softmax_row(columns[0], 0) + _log_softmax_row(columns[1], 1)) / 2
    expected = (image_to_text + text_to_image) / 2
    assert symmetric_info_nce(image, text, scale).item() == pytest.approx(expected, rel=1e-6)


def test_features_are_normalised_and_distinct_groups_are_the_reference_labels():
    generator = torch.Generator().manual_seed(0)
    image, text = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    plain = symmetric_info_nce(image, text, 20.0)
    assert symmetric_info_nce(image * 7.0, text * 0.3, 20.0).item() == pytest.approx(plain.item(), rel=1e-5)
    grouped = symmetric_info_nce(image, text, 20.0, groups=["a", "b", "c", "d", "e"])
    assert grouped.item() == pytest.approx(plain.item(), rel=1e-6)


def test_group_targets_spread_over_same_group():
    targets = group_targets(["x", "y", "x"])
    assert torch.allclose(targets, torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]))
    # Two identical pairs in one group: the loss is the uniform-target cross-entropy, by hand.
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text = image.clone()
    scale = 2.0
    row = [scale, scale, 0.0]  # logits of sample 0 (and 1); sample 2: [0, 0, scale]
    loss_01 = -0.5 * (_log_softmax_row(row, 0) + _log_softmax_row(row, 1))
    loss_2 = -_log_softmax_row([0.0, 0.0, scale], 2)
    expected = (2 * loss_01 + loss_2) / 3  # identical in both directions (symmetric logits)
    loss = symmetric_info_nce(image, text, scale, groups=["g", "g", "h"])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cross_sample_loss_matches_hand_computation():
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # views -> texts: cosines [1,0], [0,1], [0,1]
    v2t = -(_log_softmax_row([2.0, 0.0], 0) + _log_softmax_row([0.0, 2.0], 0) + _log_softmax_row([0.0, 2.0], 1)) / 3
    # prototype of class 0: normalise(mean([1,0],[0,1])) = [s, s], s = 1/sqrt(2); class 1: [0, 1]
    s = 1 / math.sqrt(2)
    t2v = -(_log_softmax_row([s / tau, 0.0], 0) + _log_softmax_row([s / tau, 1 / tau], 1)) / 2
    expected = (v2t + t2v) / 2
    assert cross_sample_loss(views, labels, texts, tau).item() == pytest.approx(expected, rel=1e-6)


def test_cross_sample_loss_with_identical_views_is_the_plain_info_nce():
    generator = torch.Generator().manual_seed(1)
    prototypes, texts = torch.randn(3, 6, generator=generator), torch.randn(3, 6, generator=generator)
    views = prototypes.repeat_interleave(4, dim=0)  # four identical views per class
    labels = torch.arange(3).repeat_interleave(4)
    tau = 0.1
    expected = symmetric_info_nce(prototypes, texts, 1 / tau)
    assert cross_sample_loss(views, labels, texts, tau).item() == pytest.approx(expected.item(), rel=1e-5)


def test_weighted_negative_nce_matches_hand_computation():
    views = torch.tensor([[1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0])
    tau, beta = 0.5, 2.0
    negatives = [0.0, 0.6]
    soft = [math.exp(beta * n) for n in negatives]
    weights = [2 * w / sum(soft) for w in soft]
    denominator = math.exp(1.0 / tau) + sum(w * math.exp(n / tau) for w, n in zip(weights, negatives, strict=True))
    expected = -(1.0 / tau) + math.log(denominator)
    assert weighted_negative_nce(views, labels, texts, tau, beta).item() == pytest.approx(expected, rel=1e-6)
    # beta = 0: every weight is 1, the plain InfoNCE over the texts.
    plain = torch.nn.functional.cross_entropy(torch.tensor([[1.0, 0.0, 0.6]]) / tau, labels)
    assert weighted_negative_nce(views, labels, texts, tau, 0.0).item() == pytest.approx(plain.item(), rel=1e-6)


def test_customcontrast_terms_decrease_on_a_toy_batch():
    generator = torch.Generator().manual_seed(2)
    views = torch.randn(12, 8, generator=generator)
    labels = torch.arange(3).repeat(4)
    texts = torch.nn.Parameter(torch.randn(3, 8, generator=generator))
    optimizer = torch.optim.Adam([texts], lr=0.05)

    def loss():
        return cross_sample_loss(views, labels, texts, 0.1) + weighted_negative_nce(views, labels, texts, 0.1, 1.0)

    first = loss().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.8 * first
