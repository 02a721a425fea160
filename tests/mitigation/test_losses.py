"""Mitigation losses against values computed by hand, edge cases and gradchecks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ravl.mitigation import (
    calibration_contrastive_loss,
    cfr_epoch_weight,
    group_dro_loss,
    group_mean_losses,
    region_aware_loss,
    similarity_pull_push,
    spurious_aware_loss,
    supervised_contrastive_loss,
    update_group_weights,
    vl_erm_loss,
    vl_erm_per_sample,
)
from ravl.training.losses import clip_loss


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def close(t: torch.Tensor, v: float, tol: float = 1e-6) -> bool:
    return math.isclose(float(t), v, rel_tol=tol, abs_tol=tol)


# Two classes along the axes; cosines are read off the region coordinates.
CLASSES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def _setting():
    """2 images (labels 0, 1), 3 regions: a core region each and a spurious region in image 0."""
    emb = torch.tensor([[1.0, 0.0],     # r0: image 0, core      cos = (1, 0)
                        [0.6, 0.8],     # r1: image 1, core      cos = (0.6, 0.8)
                        [0.8, 0.6]])    # r2: image 0, spurious  cos = (0.8, 0.6)
    img = torch.tensor([0, 1, 0])
    spur = torch.tensor([False, False, True])
    return emb, img, spur, torch.tensor([0, 1])


# ---------------------------------------------------------------------------------------------
# Region-aware loss
# ---------------------------------------------------------------------------------------------

def test_region_aware_loss_matches_hand_computation():
    emb, img, spur, labels = _setting()
    out = region_aware_loss(emb, img, spur, CLASSES, labels, tau=0.5)
    # s = cos / 0.5. log sigma(R_0, .) = (2, 0); log sigma(R_1, .) = (1.2, 1.6); spurious r2: (1.6, 1.2).
    lr0 = -2 + lse(2, 0, 1.6)          # own labels y_0, y_1, then r2 at its best batch label (1.6)
    lr1 = -1.6 + lse(1.2, 1.6, 1.6)
    la0 = -2 + lse(2, 1.2, 1.6)        # own, image 1 (label 1 != 0) at y_0, r2 at y_0
    la1 = -1.6 + lse(1.6, 0, 1.2)      # own, image 0 at y_1, r2 at y_1
    assert close(out["region_loss"], (lr0 + lr1) / 2)
    assert close(out["alignment_loss"], (la0 + la1) / 2)
    assert close(out["loss"], (lr0 + lr1 + la0 + la1) / 2)


def test_region_aware_loss_reports_the_spurious_terms_share_of_the_denominators():
    emb, img, spur, labels = _setting()
    out = region_aware_loss(emb, img, spur, CLASSES, labels, tau=0.5)
    # the r2 term over the whole denominator, per anchor (same numbers as the hand computation above)
    share_r = (math.exp(1.6 - lse(2, 0, 1.6)) + math.exp(1.6 - lse(1.2, 1.6, 1.6))) / 2
    share_a = (math.exp(1.6 - lse(2, 1.2, 1.6)) + math.exp(1.2 - lse(1.6, 0, 1.2))) / 2
    assert close(out["spurious_share_r"], share_r) and close(out["spurious_share_a"], share_a)
    assert not out["spurious_share_r"].requires_grad
    none = region_aware_loss(emb[:2], img[:2], torch.tensor([False, False]), CLASSES, labels, tau=0.5)
    assert float(none["spurious_share_r"]) == 0.0 and float(none["spurious_share_a"]) == 0.0
    # a colder temperature: once the core regions match, the spurious terms' share (their gradient) shrinks
    cold = region_aware_loss(emb, img, spur, CLASSES, labels, tau=0.07)
    assert float(cold["spurious_share_r"]) < float(out["spurious_share_r"])


def test_region_aware_loss_takes_max_over_core_regions_and_default_tau():
    emb, img, spur, labels = _setting()
    # A weaker extra core region in image 0 changes nothing (max over R_0^r).
    emb2 = torch.cat([emb, torch.tensor([[0.0, 1.0]])])
    out = region_aware_loss(emb, img, spur, CLASSES, labels)
    out2 = region_aware_loss(emb2, torch.cat([img, torch.tensor([0])]), torch.cat([spur, torch.tensor([False])]),
                             CLASSES, labels)
    # ...except at y_1, where it is the best core region of image 0: sigma(R_0, y_1) = exp(1/0.07).
    t = 0.07
    la1 = -0.8 / t + lse(0.8 / t, 1.0 / t, 0.6 / t)
    la0 = -1 / t + lse(1 / t, 0.6 / t, 0.8 / t)
    assert close(out2["alignment_loss"], (la0 + la1) / 2, 1e-5)
    lr0 = -1 / t + lse(1 / t, 1 / t, 0.8 / t)
    lr1 = -0.8 / t + lse(0.6 / t, 0.8 / t, 0.8 / t)
    assert close(out2["region_loss"], (lr0 + lr1) / 2, 1e-5)
    assert not close(out["alignment_loss"], float(out2["alignment_loss"]))


def test_region_aware_loss_is_invariant_to_region_order_and_scale():
    emb, img, spur, labels = _setting()
    perm = torch.tensor([2, 0, 1])
    a = region_aware_loss(emb, img, spur, CLASSES, labels, tau=0.3)
    b = region_aware_loss(3 * emb[perm], img[perm], spur[perm], 2 * CLASSES, labels, tau=0.3)
    for k in a:
        assert close(a[k], float(b[k]))


def test_region_aware_loss_without_spurious_regions():
    emb, img, _, labels = _setting()
    out = region_aware_loss(emb[:2], img[:2], torch.tensor([False, False]), CLASSES, labels, tau=0.5)
    lr = (-2 + lse(2, 0)) + (-1.6 + lse(1.2, 1.6))
    la = (-2 + lse(2, 1.2)) + (-1.6 + lse(1.6, 0))
    assert close(out["region_loss"], lr / 2)
    assert close(out["alignment_loss"], la / 2)


def test_image_with_only_spurious_regions_is_skipped_but_its_label_and_regions_count():
    # Image 0: core r0 (cos (1, 0)). Image 1 (label 1): only a spurious region (cos (0.8, 0.6)).
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    out = region_aware_loss(emb, torch.tensor([0, 1]), torch.tensor([False, True]), CLASSES,
                            torch.tensor([0, 1]), tau=0.5)
    lr0 = -2 + lse(2, 0, 1.6)   # label 1 is in the batch; r2 at its best label
    la0 = -2 + lse(2, 1.6)      # image 1 has no core region: sigma(empty) = 0
    assert close(out["region_loss"], lr0)          # mean over the one valid image
    assert close(out["alignment_loss"], la0)


def test_all_images_of_one_class():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
    labels = torch.tensor([0, 0])
    out = region_aware_loss(emb[:2], torch.tensor([0, 1]), torch.tensor([False, False]), CLASSES, labels, tau=0.5)
    assert close(out["loss"], 0.0)      # no negative at all: both terms are -log(x / x)
    out = region_aware_loss(emb, torch.tensor([0, 1, 1]), torch.tensor([False, False, True]), CLASSES, labels,
                            tau=0.5)
    # Only label 0 in the batch, so the spurious region scores 1.6 at it.
    lr = (-2 + lse(2, 1.6)) + (-1.2 + lse(1.2, 1.6))
    assert close(out["region_loss"], lr / 2)
    assert close(out["alignment_loss"], lr / 2)   # same-label images are not negatives in L_A


def test_label_negatives_distinct_vs_rows():
    # Three images, labels (0, 0, 1), one core region each.
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    img, spur, labels = torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.bool), torch.tensor([0, 0, 1])
    d = region_aware_loss(emb, img, spur, CLASSES, labels, tau=0.5)
    r = region_aware_loss(emb, img, spur, CLASSES, labels, tau=0.5, label_negatives="rows")
    lr_d = [-2 + lse(2, 0), -1.2 + lse(1.2, 1.6), -2 + lse(0, 2)]
    lr_r = [-2 + lse(2, 2, 0), -1.2 + lse(1.2, 1.2, 1.6), -2 + lse(0, 0, 2)]
    assert close(d["region_loss"], sum(lr_d) / 3)
    assert close(r["region_loss"], sum(lr_r) / 3)
    assert close(d["alignment_loss"], float(r["alignment_loss"]))   # L_A sums over images either way


def test_no_candidate_core_region_gives_zero_attached_to_graph():
    emb = torch.tensor([[0.8, 0.6]], requires_grad=True)
    out = region_aware_loss(emb, torch.tensor([0]), torch.tensor([True]), CLASSES, torch.tensor([0, 1]))
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()
    assert emb.grad is not None and torch.all(emb.grad == 0)
    empty = region_aware_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool),
                              CLASSES, torch.tensor([0, 1]))
    assert float(empty["loss"]) == 0.0


def test_region_aware_loss_is_stable_at_tiny_temperature_and_half_precision():
    emb, img, spur, labels = _setting()
    out = region_aware_loss(emb, img, spur, CLASSES, labels, tau=1e-4)
    assert all(torch.isfinite(v) for v in out.values())
    half = region_aware_loss(emb.half(), img, spur, CLASSES.half(), labels)
    ref = region_aware_loss(emb, img, spur, CLASSES, labels)
    assert half["loss"].dtype == torch.float32
    assert close(half["loss"], float(ref["loss"]), 1e-2)


def test_region_aware_loss_gradcheck():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cls = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    img = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    spur = torch.tensor([False, True, False, False, True, False, True])
    labels = torch.tensor([0, 1, 0, 2])
    for mode in ("distinct", "rows"):
        def f(e, c, mode=mode):
            out = region_aware_loss(e, img, spur, c, labels, tau=0.5, label_negatives=mode)
            return out["region_loss"], out["alignment_loss"]
        assert torch.autograd.gradcheck(f, (emb, cls))


def test_region_aware_loss_rejects_bad_inputs():
    emb, img, spur, labels = _setting()
    with pytest.raises(ValueError, match="'labels' argument of region_aware_loss"):
        region_aware_loss(emb, img, spur, CLASSES, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="region_image"):
        region_aware_loss(emb, torch.tensor([0, 1, 5]), spur, CLASSES, labels)
    with pytest.raises(ValueError, match="'tau' parameter"):
        region_aware_loss(emb, img, spur, CLASSES, labels, tau=0)
    with pytest.raises(ValueError, match="label_negatives"):
        region_aware_loss(emb, img, spur, CLASSES, labels, label_negatives="all")
    with pytest.raises(ValueError, match="class_embeddings"):
        region_aware_loss(emb, img, spur, torch.zeros(2, 3), labels)


# ---------------------------------------------------------------------------------------------
# VL-ERM and Group DRO
# ---------------------------------------------------------------------------------------------

def test_vl_erm_matches_hand_computation():
    img = torch.tensor([[2.0, 0.0], [0.6, 0.8]])
    out = vl_erm_per_sample(img, CLASSES, torch.tensor([0, 0]), 3.0)
    assert close(out[0], -3 + lse(3, 0))
    assert close(out[1], -1.8 + lse(1.8, 2.4))
    assert close(vl_erm_loss(img, CLASSES, torch.tensor([0, 0]), 3.0)["loss"], float(out.mean()))


def test_group_dro_pieces_match_hand_computation():
    per = torch.tensor([1.0, 3.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 2, 2])
    means, counts = group_mean_losses(per, groups, 3)
    assert means.tolist() == [2.0, 0.0, 3.0] and counts.tolist() == [2, 0, 2]
    q = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    new = update_group_weights(q, means, 0.1)
    raw = [0.5 * math.exp(0.2), 0.25, 0.25 * math.exp(0.3)]
    assert torch.allclose(new, torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64))
    out = group_dro_loss(per, groups, new)
    assert close(out["loss"], float(new[0]) * 2 + float(new[2]) * 3)
    assert close(out["average_loss"], 2.5) and close(out["worst_group_loss"], 3.0)


def test_group_dro_loss_gradient_weights_samples_by_group_weight():
    per = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    q = torch.tensor([0.2, 0.8])
    group_dro_loss(per, torch.tensor([0, 0, 1]), q)["loss"].backward()
    assert torch.allclose(per.grad, torch.tensor([0.1, 0.1, 0.8]))


# ---------------------------------------------------------------------------------------------
# In-modal contrastive terms
# ---------------------------------------------------------------------------------------------

def test_supervised_contrastive_matches_hand_computation():
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    cos = [[1, 0.6, 0], [0.6, 1, 0.8], [0, 0.8, 1]]
    l0 = -(cos[0][1] / tau - lse(cos[0][1] / tau, cos[0][2] / tau))
    l1 = -(cos[1][0] / tau - lse(cos[1][0] / tau, cos[1][2] / tau))
    # anchor 2 has no positive: skipped
    assert close(supervised_contrastive_loss(z, labels, tau=tau)["loss"], (l0 + l1) / 2)
    w = torch.tensor([2.0, 0.0, 5.0])
    assert close(supervised_contrastive_loss(z, labels, tau=tau, weights=w)["loss"], (2 * l0) / 2)
    assert float(supervised_contrastive_loss(z[:1], labels[:1])["loss"]) == 0.0


def test_similarity_pull_push_matches_hand_computation():
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    out = similarity_pull_push(z, z, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), pos_weight=1.0,
                               neg_weight=2.0)
    assert close(out[0], -(1 + 0.6) / 3 + 2 * 0 / 3)
    assert close(out[1], -(0.6 + 1) / 3 + 2 * 0.8 / 3)
    assert close(out[2], -1 / 3 + 2 * (0 + 0.8) / 3)


def test_spurious_aware_loss_components():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1])
    cls = torch.tensor([[[1.0, 0.0], [0.8, 0.6]], [[0.0, 1.0], [0.0, 2.0]]])   # [C=2, K=2, D=2]
    spur = torch.tensor([[[0.6, 0.8], [-1.0, 0.0]]])                           # [S=1, K=2, D=2]
    out = spurious_aware_loss(img, labels, cls, spur, 4.0, clip_weight=1.0, vision_weight=2.0,
                              language_weight=3.0, spurious_weight=5.0)
    class_emb = F.normalize(F.normalize(cls, dim=-1).mean(1), dim=-1)
    assert close(out["clip_loss"], float(clip_loss(img, class_emb[labels], 4.0)["loss"]))
    # L_vc: rows of cos [[1, .6], [.6, 1]], different labels -> -(1)/2 + .6/2 for both rows.
    assert close(out["vision_contrastive_loss"], -0.5 + 0.3)
    # L_lc over the 4 template prompts; class 0 rows: cos to (c0k0, c0k1, c1k0, c1k1) = (1, .8, 0, 0), (.8, 1, .6, .6)
    l_c0 = ((-(1 + 0.8) / 4 + 0) + (-(0.8 + 1) / 4 + 1.2 / 4)) / 2
    l_c1 = ((-(1 + 1) / 4 + 0.6 / 4) + (-(1 + 1) / 4 + 0.6 / 4)) / 2
    assert close(out["language_contrastive_loss"], (l_c0 + l_c1) / 2)
    # L_ls: |cos| of class prompts to the 2 spurious prompts (0.6, 0.8)·, (-1, 0)·
    ls_c0 = ((0.6 + 1) / 2 + (0.96 + 0.8) / 2) / 2
    ls_c1 = ((0.8 + 0) / 2 + (0.8 + 0) / 2) / 2
    assert close(out["language_spurious_loss"], (ls_c0 + ls_c1) / 2)
    total = (float(out["clip_loss"]) + 2 * float(out["vision_contrastive_loss"])
             + 3 * float(out["language_contrastive_loss"]) + 5 * float(out["language_spurious_loss"]))
    assert close(out["loss"], total)
    none = spurious_aware_loss(img, labels, cls, None, 4.0)
    assert float(none["language_spurious_loss"]) == 0.0
    sc = spurious_aware_loss(img, labels, cls, spur, 4.0, contrastive_form="supcon")
    assert close(sc["vision_contrastive_loss"], 0.0)   # no image has a positive


def test_calibration_contrastive_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[[0.6, 0.8], [1.0, 0.0]]])
    neg = torch.tensor([[[0.0, 1.0]]])
    out = calibration_contrastive_loss(a, pos, neg)     # tau = 1
    l = ((-0.6 + lse(0.6, 0)) + (-1 + lse(1, 0))) / 2
    assert close(out["loss"], l)
    assert close(calibration_contrastive_loss(a, pos, neg[:, :0])["loss"], 0.0)
    assert close(calibration_contrastive_loss(a, pos, neg, weights=torch.tensor([3.0]))["loss"], 3 * l)


def test_cfr_epoch_weight():
    assert cfr_epoch_weight(0, 10) == 1.5
    assert math.isclose(cfr_epoch_weight(5, 10), 0.5)
    assert math.isclose(cfr_epoch_weight(25, 100), 1.0, abs_tol=1e-12)
    with pytest.raises(ValueError, match="'n_epochs' parameter of cfr_epoch_weight"):
        cfr_epoch_weight(0, 0)


def test_contrastive_losses_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda z: supervised_contrastive_loss(z, labels, tau=0.5)["loss"], (x,))
    pos = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    neg = torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: calibration_contrastive_loss(z, pos, neg)["loss"], (x,))
    cls = torch.randn(3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    spur = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda z, c: spurious_aware_loss(z, labels, c, spur, 2.0)["loss"], (x, cls))
    assert torch.autograd.gradcheck(
        lambda z, c: vl_erm_per_sample(z, c[:, 0], labels, 2.0).sum(), (x, cls))
