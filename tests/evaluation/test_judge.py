"""The judge: object extraction and accuracy on ground-truth logits, and a short real training run."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from clif_serve.evaluation.judge import (
    HEADS,
    IGNORE,
    JudgeNet,
    _batch,
    corrupt,
    find_objects,
    judge_accuracy,
    judge_loss,
    judge_scene,
    load_judge,
    save_judge,
    targets,
    train_judge,
)


class GroundTruthJudge(nn.Module):
    """Logits that put all mass on the ground-truth class of every pixel (IGNORE pixels: class 0)."""

    def __init__(self, scenes):
        super().__init__()
        self.maps = [targets(scene) for scene in scenes]
        self.calls = 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        maps = self.maps[self.calls : self.calls + len(pixels)]
        self.calls += len(pixels)
        logits = []
        for name, classes in HEADS.items():
            labels = torch.from_numpy(np.stack([m[name] for m in maps]))
            labels = torch.where(labels == IGNORE, 0, labels)
            logits.append(torch.nn.functional.one_hot(labels, len(classes)).permute(0, 3, 1, 2).float() * 10)
        return torch.cat(logits, dim=1)


def test_objects_and_attributes_from_perfect_pixel_labels():
    rng = np.random.default_rng(0)
    scenes = [judge_scene(rng) for _ in range(40)]
    report = judge_accuracy(GroundTruthJudge(scenes), scenes)
    assert report["recall"] == 1.0 and report["precision"] == 1.0
    assert report["min_accuracy"] == 1.0


def test_objects_are_listed_largest_first_with_their_boxes():
    rng = np.random.default_rng(1)
    scene = next(s for s in (judge_scene(rng) for _ in range(100)) if len(s.toys) >= 2)
    objects = find_objects(GroundTruthJudge([scene]), np.asarray(scene.image)[None])[0]
    assert len(objects) == len(scene.toys)
    assert [o.area for o in objects] == sorted((o.area for o in objects), reverse=True)
    for obj in objects:
        left, top, right, bottom = obj.box
        assert obj.mask[top:bottom, left:right].sum() == obj.area


def test_corruptions_keep_shape_and_range():
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    out = corrupt(pixels, torch.Generator().manual_seed(0))
    assert out.shape == pixels.shape and out.min() >= -1 and out.max() <= 1 and not torch.equal(out, pixels)


def test_training_lowers_the_loss_and_the_judge_round_trips(tmp_path):
    rng = np.random.default_rng(5)
    pixels, truth = _batch(rng, 8)
    torch.manual_seed(0)
    with torch.no_grad():
        before = float(judge_loss(JudgeNet(8).eval(), pixels, truth))
    net = train_judge(steps=25, seed=0, batch_size=8, width=8)
    assert float(judge_loss(net, pixels, truth)) < before
    save_judge(net, tmp_path / "judge")
    again = load_judge(tmp_path / "judge")
    assert torch.equal(again(pixels), net(pixels))
