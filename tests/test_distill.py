"""Tests of repro.distill: losses against hand values and per-sample references, FD, teacher, loading, metrics."""
import math

import pytest
import torch
import torch.nn.functional as F

from repro.distill import (DKDLoss, FDLoss, KDLoss, NKDLoss, build_distill_loss, direct_gain,
                           effective_gain, renormalize)
from repro.errors import ReproError


# ------------------------------------------------------------------ independent per-sample references
# Written directly from the formulas with Python floats, one sample at a time; the non-target
# distributions are built by dropping the target class (no -1000 masking trick).

def _softmax(xs, T=1.0):
    m = max(x / T for x in xs)
    e = [math.exp(x / T - m) for x in xs]
    z = sum(e)
    return [v / z for v in e]


def _ce(logits, target):
    """Cross-entropy of one sample against an index or a probability list."""
    p = _softmax(logits)
    if isinstance(target, int):
        return -math.log(p[target])
    return -sum(q * math.log(pi) for q, pi in zip(target, p))


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def _label(target):
    return target if isinstance(target, int) else max(range(len(target)), key=lambda j: (target[j], -j))


def ref_kd(S, Tl, targets, T, alpha):
    total = 0.0
    for s, t, y in zip(S, Tl, targets):
        total += alpha * T * T * _kl(_softmax(t, T), _softmax(s, T)) + (1 - alpha) * _ce(s, y)
    return total / len(S)


def ref_kd_hard(S, Tl, targets):
    total = 0.0
    for s, t, y in zip(S, Tl, targets):
        total += 0.5 * _ce(s, y) + 0.5 * _ce(s, max(range(len(t)), key=t.__getitem__))
    return total / len(S)


def ref_nkd(S, Tl, targets, tau, alpha):
    total = 0.0
    for s, t, y in zip(S, Tl, targets):
        k = _label(y)
        target_term = -_softmax(t)[k] * math.log(_softmax(s)[k])
        others = [j for j in range(len(s)) if j != k]
        pt = _softmax([t[j] for j in others], tau)
        ps = _softmax([s[j] for j in others], tau)
        total += target_term - alpha * tau * tau * sum(a * math.log(b) for a, b in zip(pt, ps))
    return total / len(S)


def ref_dkd(S, Tl, targets, alpha, beta, T, ce_weight=1.0):
    total = 0.0
    for s, t, y in zip(S, Tl, targets):
        k = _label(y)
        ps, pt = _softmax(s, T), _softmax(t, T)
        bs = [ps[k], sum(p for j, p in enumerate(ps) if j != k)]
        bt = [pt[k], sum(p for j, p in enumerate(pt) if j != k)]
        others = [j for j in range(len(s)) if j != k]
        qs = _softmax([s[j] for j in others], T)
        qt = _softmax([t[j] for j in others], T)
        total += ce_weight * _ce(s, y) + T * T * (alpha * _kl(bt, bs) + beta * _kl(qt, qs))
    return total / len(S)


def _data(seed=0, batch=6, classes=7, scale=3.0, soft=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g) * scale
    t = torch.randn(batch, classes, generator=g) * scale
    if soft:
        # A mixup-like target: two one-hots mixed, then label smoothing.
        a = torch.randint(classes, (batch,), generator=g)
        b = torch.randint(classes, (batch,), generator=g)
        lam = 0.7
        y = lam * F.one_hot(a, classes).float() + (1 - lam) * F.one_hot(b, classes).float()
        y = y * 0.9 + 0.1 / classes
    else:
        y = torch.randint(classes, (batch,), generator=g)
    return s, t, y


def _as_lists(s, t, y):
    targets = y.tolist() if y.dim() == 1 else [row for row in y.tolist()]
    return s.double().tolist(), t.double().tolist(), targets


# ------------------------------------------------------------------ hand-computed values

def test_kd_hand_value_two_classes():
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120; CE = ln 2.
    s = torch.zeros(1, 2)
    t = torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([0])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl == pytest.approx(0.1308120, abs=1e-7)
    assert KDLoss(temperature=1.0, alpha=1.0)(s, t, y).item() == pytest.approx(kl, rel=1e-6)
    assert KDLoss(temperature=1.0, alpha=0.0)(s, t, y).item() == pytest.approx(math.log(2), rel=1e-6)
    # T = 2 halves the teacher's logit gap: p_t = (sqrt3, 1)/(sqrt3 + 1); the T^2 factor multiplies the KL.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    got = KDLoss(temperature=2.0, alpha=0.1)(s, t, y).item()
    assert got == pytest.approx(0.1 * 4 * kl2 + 0.9 * math.log(2), rel=1e-6)


def test_kd_soft_target_is_soft_cross_entropy():
    s = torch.tensor([[0.0, math.log(3.0)]])  # p_s = (1/4, 3/4)
    q = torch.tensor([[0.5, 0.5]])
    want = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert KDLoss(alpha=0.0)(s, s, q).item() == pytest.approx(want, rel=1e-6)


def test_kd_hard_variant_hand_value():
    s = torch.zeros(1, 3)
    t = torch.tensor([[0.0, 5.0, 1.0]])  # argmax 1
    y = torch.tensor([2])
    # 0.5 * CE(s, 2) + 0.5 * CE(s, 1) = ln 3 for uniform student logits, whatever T and alpha.
    assert KDLoss(temperature=7.0, alpha=0.9, hard=True)(s, t, y).item() == pytest.approx(math.log(3), rel=1e-6)
    s2 = torch.tensor([[0.0, math.log(2.0), 0.0]])  # p_s = (1/4, 1/2, 1/4)
    want = 0.5 * -math.log(0.25) + 0.5 * -math.log(0.5)
    assert KDLoss(hard=True)(s2, t, y).item() == pytest.approx(want, rel=1e-6)


def test_nkd_hand_value():
    # label 0; y = softmax(0, 0, ln3) = (1/5, 1/5, 3/5); teacher softmax(ln2, 0, 0) = (1/2, 1/4, 1/4).
    # target term = -(1/2) ln(1/5); non-target: teacher (1/2, 1/2), student (1/4, 3/4) over classes 1, 2.
    s = torch.tensor([[0.0, 0.0, math.log(3.0)]])
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    y = torch.tensor([0])
    target_term = 0.5 * math.log(5.0)
    nontarget = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    parts = NKDLoss().components(s, t, y)
    assert parts["nkd_target"].item() == pytest.approx(target_term, rel=1e-6)
    assert parts["nkd_nontarget"].item() == pytest.approx(nontarget, rel=1e-6)
    assert NKDLoss()(s, t, y).item() == pytest.approx(target_term + nontarget, rel=1e-6)
    assert NKDLoss(alpha=2.0)(s, t, y).item() == pytest.approx(target_term + 2 * nontarget, rel=1e-6)
    # tau = 2: non-target softmaxes of halved logits; tau^2 = 4 in front.
    pt = _softmax([0.0, 0.0], 2.0)
    ps = _softmax([0.0, math.log(3.0)], 2.0)
    want = target_term - 4 * sum(a * math.log(b) for a, b in zip(pt, ps))
    assert NKDLoss(temperature=2.0)(s, t, y).item() == pytest.approx(want, rel=1e-6)


def test_dkd_hand_value():
    # label 0, T = 1: student uniform over 3 -> b_s = (1/3, 2/3); teacher (1/2, 1/4, 1/4) -> b_t = (1/2, 1/2);
    # non-target distributions are both uniform, so NCKD = 0. TCKD = 1/2 ln(3/2) + 1/2 ln(3/4) = 1/2 ln(9/8).
    s = torch.zeros(1, 3)
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    y = torch.tensor([0])
    parts = DKDLoss(alpha=1.0, beta=8.0, temperature=1.0).components(s, t, y)
    assert parts["tckd"].item() == pytest.approx(0.5 * math.log(9 / 8), rel=1e-6)
    assert parts["nckd"].item() == pytest.approx(0.0, abs=1e-7)
    assert parts["ce"].item() == pytest.approx(math.log(3), rel=1e-6)
    loss = DKDLoss(alpha=2.0, beta=8.0, temperature=1.0, ce_weight=0.5)(s, t, y).item()
    assert loss == pytest.approx(0.5 * math.log(3) + 2 * 0.5 * math.log(9 / 8), rel=1e-6)


# ------------------------------------------------------------------ per-sample references

@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("T,alpha", [(1.0, 0.1), (3.0, 0.1), (4.0, 0.7)])
def test_kd_matches_per_sample_reference(soft, T, alpha):
    s, t, y = _data(seed=1, soft=soft)
    got = KDLoss(temperature=T, alpha=alpha)(s, t, y).item()
    assert got == pytest.approx(ref_kd(*_as_lists(s, t, y), T, alpha), rel=1e-5)
    got_hard = KDLoss(hard=True)(s, t, y).item()
    assert got_hard == pytest.approx(ref_kd_hard(*_as_lists(s, t, y)), rel=1e-5)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("tau,alpha", [(1.0, 1.0), (2.0, 1.5), (4.0, 0.5), (1000.0, 1.0)])
def test_nkd_matches_per_sample_reference(soft, tau, alpha):
    # At tau = 1000 the masked target keeps a sizeable probability, so only the released renormalisation by
    # (1 - its target probability) makes the masked softmax equal the distribution over the other classes.
    s, t, y = _data(seed=2, soft=soft)
    got = NKDLoss(temperature=tau, alpha=alpha)(s, t, y).item()
    assert got == pytest.approx(ref_nkd(*_as_lists(s, t, y), tau, alpha), rel=1e-5)


def test_nkd_soft_target_uses_its_argmax_only():
    s, t, y = _data(seed=3, soft=True)
    assert torch.allclose(NKDLoss()(s, t, y), NKDLoss()(s, t, y.argmax(1)))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 8.0, 2.5)])
def test_dkd_matches_per_sample_reference(soft, alpha, beta, T):
    s, t, y = _data(seed=4, soft=soft)
    got = DKDLoss(alpha=alpha, beta=beta, temperature=T)(s, t, y).item()
    assert got == pytest.approx(ref_dkd(*_as_lists(s, t, y), alpha, beta, T), rel=1e-5)


def test_dkd_warmup_ramps_the_distillation_term_only():
    s, t, y = _data(seed=5)
    loss = DKDLoss(warmup_steps=4)
    full = DKDLoss().components(s, t, y)
    for step, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (100, 1.0)]:
        parts = loss.components(s, t, y, step=step)
        assert parts["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-6)
        assert parts["tckd"].item() == pytest.approx(factor * full["tckd"].item(), rel=1e-6)
        assert parts["nckd"].item() == pytest.approx(factor * full["nckd"].item(), rel=1e-6)
    with pytest.raises(ReproError, match="step"):
        loss(s, t, y)


@pytest.mark.parametrize("make", [lambda: KDLoss(), lambda: KDLoss(hard=True), lambda: NKDLoss(),
                                  lambda: NKDLoss(temperature=2.0), lambda: DKDLoss()])
@pytest.mark.parametrize("soft", [False, True])
def test_logit_loss_gradients_are_finite_and_reach_only_the_student(make, soft):
    s, t, y = _data(seed=6, soft=soft, scale=5.0)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = make()(s, t, y)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher's logits are treated as constants


def test_losses_compute_in_float32_from_half_logits():
    s, t, y = _data(seed=7)
    for loss in (KDLoss(), NKDLoss(), DKDLoss()):
        half = loss(s.bfloat16(), t.bfloat16(), y)
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(loss(s.bfloat16().float(), t.bfloat16().float(), y).item(), rel=1e-6)


def test_bad_shapes_raise():
    s, t, y = _data()
    with pytest.raises(ReproError, match="same shape"):
        KDLoss()(s, t[:, :-1], y)
    with pytest.raises(ReproError, match="class indices"):
        NKDLoss()(s, t, y[:-1])
    with pytest.raises(ReproError, match="soft target"):
        DKDLoss()(s, t, torch.rand(6, 3))


# ------------------------------------------------------------------ FD

def test_fd_smoothl1_hand_value_and_projection():
    # Equal channels have no projector by default (as released); this test sets one to an identity.
    fd = FDLoss(2, 2, loss="smoothl1", beta=2.0, weight=3.0, projector="always")
    with torch.no_grad():
        fd.projector.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        fd.projector.bias.zero_()
    student = torch.zeros(1, 2, 1, 2)
    teacher = torch.tensor([[[[1.0, 3.0]], [[-0.5, -4.0]]]])
    # SmoothL1 with beta 2: 0.5 d^2 / 2 for |d| < 2, |d| - 1 otherwise.
    elems = [0.5 * 1 / 2, 3 - 1, 0.5 * 0.25 / 2, 4 - 1]
    assert fd(student, teacher).item() == pytest.approx(3.0 * sum(elems) / 4, rel=1e-6)
    mse = FDLoss(2, 2, loss="mse", projector="always")
    mse.load_state_dict(fd.state_dict())
    assert mse(student, teacher).item() == pytest.approx((1 + 9 + 0.25 + 16) / 4, rel=1e-6)


def test_fd_resizes_student_map_bilinearly_and_detaches_teacher():
    torch.manual_seed(0)
    fd = FDLoss(4, 6)
    student = torch.randn(2, 4, 2, 2, requires_grad=True)
    teacher = torch.randn(2, 6, 4, 4, requires_grad=True)
    proj = F.interpolate(fd.projector(student), size=(4, 4), mode="bilinear", align_corners=False)
    assert fd(student, teacher).item() == pytest.approx(F.smooth_l1_loss(proj, teacher, beta=2.0).item(), rel=1e-6)
    fd(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None and fd.projector.weight.grad is not None


def test_fd_channel_mismatch_names_both_counts():
    fd = FDLoss(4, 6)
    with pytest.raises(ReproError, match=r"4 channels.*\(2, 5, 2, 2\)"):
        fd(torch.randn(2, 5, 2, 2), torch.randn(2, 6, 2, 2))
    with pytest.raises(ReproError, match=r"6 channels.*\(2, 7, 2, 2\)"):
        fd(torch.randn(2, 4, 2, 2), torch.randn(2, 7, 2, 2))


# ------------------------------------------------------------------ criterion and factory

def test_build_defaults_are_the_released_ones():
    kd = build_distill_loss("kd").logit_loss
    assert (kd.temperature, kd.alpha, kd.hard) == (3.0, 0.1, False)
    nkd = build_distill_loss("NKD").logit_loss
    assert (nkd.temperature, nkd.alpha) == (1.0, 1.0)
    dkd = build_distill_loss("dkd").logit_loss
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.ce_weight, dkd.warmup_steps) == (1.0, 8.0, 4.0, 1.0, 0)
    fd = build_distill_loss("nkd+fd", student_channels=8, teacher_channels=12).fd
    assert (fd.loss, fd.weight, fd.beta) == ("smoothl1", 1.0, 2.0)
    assert tuple(fd.projector.weight.shape) == (12, 8, 1, 1)
    assert build_distill_loss("kd", temperature=None, alpha=0.5).logit_loss.alpha == 0.5


def test_build_rejects_unknown_method_and_unused_settings():
    with pytest.raises(ReproError, match="kd, hard, nkd, dkd, fd, kd\\+fd, nkd\\+fd"):
        build_distill_loss("crd")
    with pytest.raises(ReproError, match="beta"):
        build_distill_loss("kd", beta=8.0)
    with pytest.raises(ReproError, match="student_channels"):
        build_distill_loss("fd")
    with pytest.raises(ReproError, match="label_smoothing"):
        build_distill_loss("nkd", label_smoothing=0.1)


@pytest.mark.parametrize("method", ["kd", "hard", "nkd", "dkd", "fd", "kd+fd", "nkd+fd"])
def test_criterion_total_is_sum_of_logged_parts(method):
    torch.manual_seed(0)
    s, t, y = _data(seed=8, soft=True)
    smap, tmap = torch.randn(6, 8, 2, 2), torch.randn(6, 12, 2, 2)
    kw = dict(student_channels=8, teacher_channels=12) if "fd" in method else {}
    crit = build_distill_loss(method, **kw)
    total, parts = crit(s, smap, t, tmap, y)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-6)
    assert all(not p.requires_grad for p in parts.values())
    assert ("fd" in parts) == ("fd" in method)
    if method == "fd":
        assert parts["ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    if "+" in method:
        logit_only = build_distill_loss(method.split("+")[0])(s, None, t, None, y)[0]
        assert (total - parts["fd"]).item() == pytest.approx(logit_only.item(), rel=1e-6)
    # The criterion's only parameters are the FD projector's.
    assert sum(p.numel() for p in crit.parameters()) == (12 * 8 + 12 if "fd" in method else 0)


def test_criterion_needs_feature_maps_for_fd():
    s, t, y = _data()
    crit = build_distill_loss("kd+fd", student_channels=8, teacher_channels=12)
    with pytest.raises(ReproError, match="feature maps"):
        crit(s, None, t, torch.randn(6, 12, 2, 2), y)


def test_fd_label_smoothing_applies_to_index_targets():
    s, t, y = _data()
    crit = build_distill_loss("fd", student_channels=2, teacher_channels=2, label_smoothing=0.1)
    m = torch.zeros(6, 2, 1, 1)
    _, parts = crit(s, m, t, m, y)
    assert parts["ce"].item() == pytest.approx(F.cross_entropy(s, y, label_smoothing=0.1).item(), rel=1e-6)


# ------------------------------------------------------------------ metrics and re-normalisation

def test_gains():
    assert direct_gain(83.1, 82.1) == pytest.approx(1.0)
    assert effective_gain(83.1, 82.1, 82.5) == pytest.approx(1.0 / 82.5)
    assert math.isnan(effective_gain(float("nan"), 82.1, 82.5))
    with pytest.raises(ReproError, match="percent"):
        direct_gain(183.1, 82.1)
    with pytest.raises(ReproError, match="percent"):
        effective_gain(83.1, 82.1, 0.0)


def test_renormalize_maps_student_normalisation_to_teacher():
    torch.manual_seed(0)
    raw = torch.rand(2, 3, 4, 4)
    ms, ss = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # CIFAR-100
    mt, st = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet
    x_student = (raw - torch.tensor(ms).view(1, 3, 1, 1)) / torch.tensor(ss).view(1, 3, 1, 1)
    x_teacher = (raw - torch.tensor(mt).view(1, 3, 1, 1)) / torch.tensor(st).view(1, 3, 1, 1)
    assert torch.allclose(renormalize(x_student, ms, ss, mt, st), x_teacher, atol=1e-5)
    # Hand value for one pixel of channel 0: raw 0.5.
    one = torch.full((1, 3, 1, 1), 0.5)
    xs = (one - torch.tensor(ms).view(1, 3, 1, 1)) / torch.tensor(ss).view(1, 3, 1, 1)
    assert renormalize(xs, ms, ss, mt, st)[0, 0, 0, 0].item() == pytest.approx((0.5 - 0.485) / 0.229, rel=1e-5)


# ------------------------------------------------------------------ teacher

models = pytest.importorskip("repro.models")

from repro.distill import (PAPER_PAIRS, PAPER_STUDENTS, PAPER_TEACHERS, Teacher, load_teacher,  # noqa: E402
                           paper_pairs)

# Last-stage channels from the published definitions: SLaK dims x1.3 truncated, timm ConvNeXt, ViT-S, Swin-T.
PAPER_CHANNELS = {"slak_tiny": 998, "slak_small": 998, "slak_base": 1331, "convnext_tiny": 768, "vit_small": 384,
                  "swin_tiny": 768, "vit_small_l2s": 768, "cswin_tiny": 512, "l2s_convnext_tiny": 768, "convnext_atto": 320, "convnext_femto": 384,
                  "convnext_pico": 512, "convnext_nano": 640, "resnet50": 2048}


def _micro(name="slak_micro", classes=10, seed=0, **kw):
    torch.manual_seed(seed)
    model = models.create_model(name, num_classes=classes, img_size=32, **kw)
    # Non-trivial BatchNorm statistics, so eval mode and re-parameterization are really exercised.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_paper_pairs_channels_and_projectors_at_32_on_meta():
    pairs = paper_pairs(32)
    assert {(p.teacher, p.student) for p in pairs} == set(PAPER_PAIRS)
    assert len(PAPER_PAIRS) == len(PAPER_TEACHERS) * len(PAPER_STUDENTS)
    maps = {}
    for name in PAPER_TEACHERS + PAPER_STUDENTS:
        with torch.device("meta"):
            model = models.create_model(name, num_classes=100, img_size=32).eval()
            maps[name] = models.logits_and_features(model, torch.empty(2, 3, 32, 32))[1].shape
        assert maps[name][1] == PAPER_CHANNELS[name], name
    for p in pairs:
        assert (p.teacher_channels, p.student_channels) == (PAPER_CHANNELS[p.teacher], PAPER_CHANNELS[p.student])
        with torch.device("meta"):
            fd = FDLoss(p.student_channels, p.teacher_channels, projector="always")  # also for equal channels
            projected = fd.project(torch.empty(maps[p.student]), maps[p.teacher][-2:])
            loss = fd(torch.empty(maps[p.student]), torch.empty(maps[p.teacher]))
        assert tuple(fd.projector.weight.shape) == (p.teacher_channels, p.student_channels, 1, 1)
        assert projected.shape == maps[p.teacher] and loss.dim() == 0


@pytest.mark.parametrize("teacher_name,student_name", [("slak_micro", "l2s_convnext_micro"),
                                                       ("slak_micro", "convnext_atto")])
def test_fd_real_forward_micro_and_timm_pair(teacher_name, student_name):
    teacher = Teacher(_micro(teacher_name, stem_stride=2))  # 2x2 teacher map at 32x32
    student = _micro(student_name, seed=1)
    x = torch.randn(2, 3, 32, 32)
    t_logits, t_map = teacher(x)
    s_logits, s_map = models.logits_and_features(student, x)
    crit = build_distill_loss("nkd+fd", student_channels=models.feature_channels(student),
                              teacher_channels=teacher.channels)
    total, parts = crit(s_logits, s_map, t_logits, t_map, torch.tensor([1, 2]))
    assert t_map.shape[-2:] == (2, 2) and s_map.shape[-2:] == (1, 1)
    assert torch.isfinite(total) and set(parts) == {"nkd_target", "nkd_nontarget", "fd"}
    total.backward()
    assert all(p.grad is not None for p in crit.parameters())


def test_teacher_is_frozen_through_a_student_training_step():
    teacher = Teacher(_micro("slak_micro", stem_stride=2))
    student = _micro("l2s_convnext_micro", seed=1, stem_stride=2)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    student_before = [p.detach().clone() for p in student.parameters()]
    crit = build_distill_loss("kd+fd", student_channels=models.feature_channels(student),
                              teacher_channels=teacher.channels)
    opt = torch.optim.AdamW(list(student.parameters()) + list(crit.parameters()), lr=1e-2)
    assert not any(p.requires_grad for p in teacher.parameters())
    # A careless parent module switching everything to train mode and to requires_grad must not reach the
    # teacher's behaviour: eval mode stays, and inference mode builds no graph anyway.
    parent = torch.nn.ModuleDict({"student": student, "teacher": teacher})
    parent.train()
    parent.requires_grad_(True)
    assert student.training and not teacher.training
    assert not any(m.training for m in teacher.modules())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    t_logits, t_map = teacher(x)
    assert not t_logits.requires_grad and not t_logits.is_inference()
    s_logits, s_map = models.logits_and_features(student, x)
    total, _ = crit(s_logits, s_map, t_logits, t_map, y)
    opt.zero_grad()
    total.backward()
    opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats included
    assert any(not torch.equal(a, b.detach()) for a, b in zip(student_before, student.parameters()))


def test_teacher_forward_matches_model_and_deploy_form():
    model = _micro("slak_micro", stem_stride=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_logits, ref_map = models.logits_and_features(model, x)
    import copy
    deployed = Teacher(copy.deepcopy(model), deploy=True)
    plain = Teacher(copy.deepcopy(model), deploy=False)
    assert sum(p.numel() for p in deployed.parameters()) < sum(p.numel() for p in plain.parameters())
    for teacher in (deployed, plain):
        logits, fmap = teacher(x)
        assert torch.allclose(logits, ref_logits, atol=1e-4) and torch.allclose(fmap, ref_map, atol=1e-4)
    logits, _ = Teacher(copy.deepcopy(model), channels_last=True)(x)
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    logits, _ = Teacher(copy.deepcopy(model), amp_dtype="bf16")(x)
    assert torch.allclose(logits.float(), ref_logits, atol=0.1)


def test_teacher_renormalises_inputs():
    model = _micro("l2s_convnext_micro").eval()
    ms, ss, mt, st = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    teacher = Teacher(model, mean=mt, std=st, student_mean=ms, student_std=ss)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(renormalize(x, ms, ss, mt, st))
        assert not torch.allclose(want, model(x), atol=1e-4)
    assert torch.allclose(teacher(x)[0], want, atol=1e-5)
    same = Teacher(model, mean=mt, std=st, student_mean=mt, student_std=st)
    assert not same.renormalizes
    assert not any("mean" in k or "std" in k for k in teacher.state_dict())
    # Without the teacher's statistics it takes the student's inputs as they are (same data pipeline).
    as_is = Teacher(model, student_mean=ms, student_std=ss)
    assert not as_is.renormalizes
    with torch.no_grad():
        assert torch.allclose(as_is(x)[0], model(x), atol=1e-5)
    with pytest.raises(ReproError, match="student_mean"):
        Teacher(model, mean=mt, std=st)
    with pytest.raises(ReproError, match="together"):
        Teacher(model, mean=mt, student_mean=ms, student_std=ss)


# ------------------------------------------------------------------ load_teacher

def _save_run(tmp_path, model, name="slak_micro", classes=10, ema=None, summary=None, **kwargs):
    """A finished teacher run folder (`summary` entries replace those of its summary.json; None writes none)."""
    cfg = {"model": {"name": name, "num_classes": classes, "drop_path_rate": 0.1, "kwargs": kwargs},
           "data": {"img_size": 32}}
    run = tmp_path / "teacher_run"
    (run / "checkpoints").mkdir(parents=True)
    import yaml
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = {"model": model.state_dict(), "config": cfg, "step": 10}
    if ema is not None:
        ckpt["model_ema"] = ema.state_dict()
    # An older checkpoint that must not be picked.
    torch.save({"model": {}, "config": cfg}, run / "checkpoints" / "ckpt-00000002.pt")
    torch.save(ckpt, run / "checkpoints" / "ckpt-00000010.pt")
    if summary is not None:
        import json
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def _save_finished_run(tmp_path, model, summary=None, **kw):
    return _save_run(tmp_path, model, summary={"status": "complete", "stop_reason": None, "steps_done": 10,
                                               "steps_total": 10, **(summary or {})}, **kw)


def _same_weights(teacher, model):
    ref = Teacher(model, deploy=False).model.state_dict()
    got = teacher.model.state_dict()
    return all(torch.equal(ref[k], got[k]) for k in ref)


def test_load_teacher_from_run_folder_and_identity(tmp_path):
    model = _micro("slak_micro", stem_stride=2)
    run = _save_finished_run(tmp_path, model, stem_stride=2)
    teacher = load_teacher(run, num_classes=10, img_size=32, deploy=False)
    assert _same_weights(teacher, model) and not teacher.training
    ident = teacher.identity()
    ckpt = run / "checkpoints" / "ckpt-00000010.pt"
    import hashlib
    assert ident["path"] == str(ckpt.resolve()) and ident["model_name"] == "slak_micro"
    assert ident["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest() and ident["weights"] == "model"
    # The same file loads directly (a checkpoint of this package records its model name).
    assert _same_weights(load_teacher(ckpt, num_classes=10, img_size=32, deploy=False), model)


def test_load_teacher_picks_ema_when_summary_says_better(tmp_path):
    model, ema = _micro("l2s_convnext_micro", seed=0), _micro("l2s_convnext_micro", seed=1)
    run = _save_finished_run(tmp_path, model, name="l2s_convnext_micro", ema=ema, summary={"ema_better": True})
    teacher = load_teacher(run, num_classes=10, img_size=32, deploy=False)
    assert _same_weights(teacher, ema) and teacher.identity()["weights"] == "model_ema"
    raw = load_teacher(run, num_classes=10, img_size=32, deploy=False, use_ema=False)
    assert _same_weights(raw, model)


@pytest.mark.parametrize("final_is,ema_better", [("ema", False), ("raw", True)])
def test_load_teacher_takes_the_runs_final_model(tmp_path, final_is, ema_better):
    """The run's final model (`final_is`, decided at its last evaluation) wins over `ema_better` (its best
    evaluation, possibly an early epoch): the teacher is the model the run reported."""
    model, ema = _micro("l2s_convnext_micro", seed=0), _micro("l2s_convnext_micro", seed=1)
    run = _save_finished_run(tmp_path, model, name="l2s_convnext_micro", ema=ema,
                             summary={"final_is": final_is, "ema_better": ema_better})
    teacher = load_teacher(run, num_classes=10, img_size=32, deploy=False)
    assert _same_weights(teacher, ema if final_is == "ema" else model)
    assert teacher.identity()["weights"] == ("model_ema" if final_is == "ema" else "model")


def test_load_teacher_official_and_timm_files(tmp_path):
    import argparse
    model = _micro("l2s_convnext_micro")
    official = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "epoch": 3, "args": argparse.Namespace(model="SLaK_tiny")}, official)
    with pytest.raises(ReproError, match="model_name"):
        load_teacher(official, num_classes=10, img_size=32)
    assert _same_weights(load_teacher(official, model_name="l2s_convnext_micro", num_classes=10, img_size=32,
                                      deploy=False), model)
    plain = tmp_path / "plain.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, plain)  # saved from DDP
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": model.state_dict()}, wrapped)
    for path in (plain, wrapped):
        assert _same_weights(load_teacher(path, model_name="l2s_convnext_micro", num_classes=10, img_size=32,
                                          deploy=False), model)


def test_load_teacher_errors(tmp_path):
    with pytest.raises(ReproError, match="does not exist"):
        load_teacher(tmp_path / "nowhere.pt", model_name="slak_micro", num_classes=10, img_size=32)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ReproError, match="ckpt-"):
        load_teacher(tmp_path / "empty_run", num_classes=10, img_size=32)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ReproError, match="could not read"):
        load_teacher(garbage, model_name="slak_micro", num_classes=10, img_size=32)

    weights = tmp_path / "slak.pth"
    torch.save({"model": _micro("slak_micro").state_dict()}, weights)
    with pytest.raises(ReproError, match=r"do not fit the architecture 'l2s_convnext_micro'.*missing keys: .*LoRA"):
        load_teacher(weights, model_name="l2s_convnext_micro", num_classes=10, img_size=32)
    with pytest.raises(ReproError, match="predicts 10 classes but the student's data has 100"):
        load_teacher(weights, model_name="slak_micro", num_classes=100, img_size=32)
    run = _save_finished_run(tmp_path, _micro("slak_micro"))
    with pytest.raises(ReproError, match="10 classes but the student's data has 100"):
        load_teacher(run, num_classes=100, img_size=32)
    with pytest.raises(ReproError, match="contradicts"):
        load_teacher(run, model_name="l2s_convnext_micro", num_classes=10, img_size=32)
    with pytest.raises(ReproError, match="no EMA"):
        load_teacher(run, num_classes=10, img_size=32, use_ema=True)


def test_load_teacher_refuses_an_unfinished_run_folder(tmp_path):
    """A stopped, running or crashed teacher run is not used silently; its checkpoint file still loads."""
    model = _micro("slak_micro")
    run = _save_run(tmp_path, model, summary={"status": "stopped", "stop_reason": "time_budget", "steps_done": 45,
                                              "steps_total": 600})
    newest = run / "checkpoints" / "ckpt-00000010.pt"
    with pytest.raises(ReproError) as err:
        load_teacher(run, num_classes=10, img_size=32)
    message = str(err.value)
    assert f"the teacher run at {run} is 'stopped' (time_budget) after 45 of 600 steps" in message
    assert f"--out {run}" in message and f"the newest is {newest}" in message and "\n" not in message
    (run / "summary.json").unlink()  # still training, or killed before its first summary
    with pytest.raises(ReproError, match=r"checkpoints \(up to step 10\) but no summary.json"):
        load_teacher(run, num_classes=10, img_size=32)
    assert _same_weights(load_teacher(newest, num_classes=10, img_size=32, deploy=False), model)


def test_load_teacher_model_name_advice_is_for_the_command_line(tmp_path):
    """A teacher file that does not record its model asks for the config key a CLI user sets."""
    weights = tmp_path / "official.pth"
    torch.save({"model": _micro("slak_micro").state_dict()}, weights)
    with pytest.raises(ReproError) as err:
        load_teacher(weights, num_classes=10, img_size=32)
    assert "--set distill.teacher_model=NAME" in str(err.value) and "`repro models`" in str(err.value)
    assert "slak_tiny" in str(err.value) and "list_models()" not in str(err.value)
    with pytest.raises(ReproError, match=r"do not fit.*--set distill\.teacher_model=NAME"):
        load_teacher(weights, model_name="l2s_convnext_micro", num_classes=10, img_size=32)
