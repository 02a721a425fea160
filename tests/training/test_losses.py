import math

import torch

from ravl.training.losses import clip_loss


def test_clip_loss_matches_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = 2.0
    out = clip_loss(img, txt, scale)
    # logits = 2 * [[1, 0.6], [0, 0.8]]
    l00, l01, l10, l11 = 2.0, 1.2, 0.0, 1.6
    i2t = (-(l00 - math.log(math.exp(l00) + math.exp(l01))) - (l11 - math.log(math.exp(l10) + math.exp(l11)))) / 2
    t2i = (-(l00 - math.log(math.exp(l00) + math.exp(l10))) - (l11 - math.log(math.exp(l01) + math.exp(l11)))) / 2
    assert math.isclose(out["image_to_text"].item(), i2t, rel_tol=1e-6)
    assert math.isclose(out["text_to_image"].item(), t2i, rel_tol=1e-6)
    assert math.isclose(out["loss"].item(), (i2t + t2i) / 2, rel_tol=1e-6)


def test_clip_loss_normalises_and_rewards_alignment():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    aligned = clip_loss(3 * x, x, 10.0)["loss"]
    shuffled = clip_loss(x, x.roll(1, 0), 10.0)["loss"]
    assert aligned < shuffled


def test_clip_loss_gradcheck():
    torch.manual_seed(0)
    img = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: clip_loss(a, b, 3.0)["loss"], (img, txt))
