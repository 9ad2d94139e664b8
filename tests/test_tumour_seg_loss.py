"""The segmentation loss: a model that predicts "no tumour anywhere" must still be pushed towards the
tumour (soft Dice alone let `voxel-features` collapse there in 2 of 3 seeds), and the loss must stay a
mean of per-case terms, as DP-SGD's per-sample clipping assumes."""

from __future__ import annotations

import torch

from fedward.common.tasks import get_task


def _case(tumour: bool) -> torch.Tensor:
    mask = torch.zeros(1, 8, 8, 4, dtype=torch.uint8)
    if tumour:
        mask[:, 2:5, 2:5, 1:3] = 1
    return mask


def test_a_model_predicting_no_tumour_anywhere_still_gets_a_tumour_gradient() -> None:
    task = get_task("tumour-seg")
    target = torch.stack([_case(True), _case(False)])
    logits = torch.zeros(2, 2, 8, 8, 4)
    logits[:, 0] = 12.0  # saturated: background everywhere, softmax ≈ 1 - 6e-11 (float32: exactly 1)
    logits.requires_grad_(True)
    task.loss(logits, target).backward()
    tumour = target[0, 0].bool()
    towards_tumour = -logits.grad[0, 1][tumour]  # descent raises the tumour logit where the tumour is
    assert (towards_tumour > 1e-4).all()


def test_the_loss_is_the_mean_of_per_case_losses() -> None:
    task = get_task("tumour-seg")
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, 4)
    target = torch.stack([_case(True), _case(False), _case(True)])
    per_case = [task.loss(logits[i : i + 1], target[i : i + 1]) for i in range(3)]
    assert torch.allclose(task.loss(logits, target), torch.stack(per_case).mean(), atol=1e-6)


def test_one_patients_mask_does_not_rescale_another_patients_gradient() -> None:
    """DP-SGD clips each patient's gradient on its own: a loss normalised over the whole batch (a class-
    weighted cross-entropy's summed weights) would let one patient's mask change another's gradient."""
    task = get_task("tumour-seg")
    torch.manual_seed(1)
    base = torch.randn(2, 2, 8, 8, 4)
    gradients = []
    for other in (_case(False), _case(True)):
        logits = base.clone().requires_grad_(True)
        task.loss(logits, torch.stack([_case(True), other])).backward()
        gradients.append(logits.grad[0].clone())
    assert torch.equal(gradients[0], gradients[1])
