"""The reproduction presets run the authors' released algorithm (VITA-Group/SLaK sparse_core.py, model_sema.py,
engine_kd.py, main_KD.py); the alternatives stay available as named options."""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from repro.config import DistillConfig, SparseConfig, list_presets, load_config
from repro.distill import build_distill_loss
from repro.errors import ReproError
from repro.plan import load_plan
from repro.sparse import DynamicSparsity, official_recipe

REPO = Path(__file__).resolve().parents[1]
REPRODUCTION = ("seed-", "cifar100-", "imagenet-slak-", "imagenet-l2s-")
BETAS = (0.9, 0.999)


# ------------------------------------------------------------------------------------------- presets
def reproduction_presets():
    names = [n for n in list_presets() if n.startswith(REPRODUCTION)]
    assert {"seed-slak-tiny-cifar100", "cifar100-student", "imagenet-slak-tiny", "imagenet-l2s-small-nkd"} <= set(
        names)
    return names


@pytest.mark.parametrize("preset", reproduction_presets())
def test_reproduction_presets_run_the_released_sparse_algorithm(preset):
    sc = load_config(preset).sparse
    assert (sc.regrow_pruned, sc.dense_cutoff, sc.reset_moments) == (True, 0.99, False), preset


def test_the_alternatives_stay_named_options():
    assert (SparseConfig().regrow_pruned, SparseConfig().dense_cutoff, SparseConfig().reset_moments) == (
        False, 1.0, True)
    cfg = load_config("seed-slak-tiny-cifar100", overrides=[
        "sparse.regrow_pruned=false", "sparse.dense_cutoff=1.0", "sparse.reset_moments=true"])
    assert (cfg.sparse.regrow_pruned, cfg.sparse.dense_cutoff, cfg.sparse.reset_moments) == (False, 1.0, True)
    recipe = official_recipe("slak_tiny")
    assert (recipe["regrow_pruned"], recipe["dense_cutoff"], recipe["reset_moments"]) == (True, 0.99, False)
    assert DistillConfig().fd_projector == "auto"


def test_l2s_small_preset_is_the_released_command():
    cfg = load_config("imagenet-l2s-small-nkd")
    assert (cfg.model.name, cfg.model.drop_path_rate) == ("l2s_convnext_small", 0.1)
    assert (cfg.distill.method, cfg.distill.teacher_model) == ("nkd", "slak_small")
    # 4 GPUs x 64 x update_freq 16 at lr 4e-3, 300 epochs, EMA 0.9999, ImageNet at 224.
    assert (cfg.train.base_lr, cfg.train.base_batch, cfg.train.epochs) == (4e-3, 4096, 300)
    assert (cfg.train.ema_decay, cfg.data.name, cfg.data.img_size) == (0.9999, "imagenet", 224)
    assert cfg.sparse.sparsity == 0.0


def test_resnet50_runs_have_no_drop_path():
    seen = 0
    for preset in list_presets():
        cfg = load_config(preset)
        if cfg.model.name == "resnet50":
            seen += 1
            assert cfg.model.drop_path_rate == 0.0, preset
    assert load_config("imagenet-teacher-comparison-resnet50").model.name == "resnet50"
    for path in sorted((REPO / "kaggle" / "plans").glob("*.yaml")):
        for run in load_plan(path).runs:
            for name, cfg in _run_configs(run):
                if cfg.model.name == "resnet50":
                    seen += 1
                    assert cfg.model.drop_path_rate == 0.0, (path.name, run.name, name)
    assert seen >= 13  # the ResNet-50 student alone and its 12 distilled runs


def _local(overrides):
    return [o.split("kaggle-input:")[0] + "teacher" if "kaggle-input:" in o else o for o in overrides or []]


def _run_configs(run):
    """(name, config) of a plan run, or of each member when the run is a cohort."""
    from repro.train.cohort import load_cohort

    cohort = run.parameters.get("cohort")
    if cohort is None:
        return [(run.name, load_config(run.parameters["preset"], overrides=_local(run.parameters.get("overrides"))))]
    spec = dict(cohort) if isinstance(cohort, dict) else yaml.safe_load(Path(cohort).read_text())
    spec["overrides"] = _local(spec.get("overrides"))
    spec["members"] = [{**m, "overrides": _local(m.get("overrides"))} for m in spec["members"]]
    return load_cohort(spec).members


# --------------------------------------------------------------------------------------- moments
def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4))


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    return x, (x @ torch.randn(8, 4, generator=g)).argmax(1)


def train_until_update(reset_moments, update_at, lr=1e-2):
    """Train to the step before the update; return model, optimizer, sparsity and the data."""
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=BETAS, weight_decay=0.05)
    ds = DynamicSparsity(model, opt, sparsity=0.5, init="uniform", update_frequency=update_at, prune_rate=0.5,
                         total_steps=10 * update_at, seed=0, regrow_pruned=True, reset_moments=reset_moments)
    x, y = data()
    for s in range(update_at - 1):
        step(model, opt, ds, x, y, s)
    return model, opt, ds, x, y


def step(model, opt, ds, x, y, s):
    i = (s * 16) % len(x)
    F.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
    opt.step()
    ds.step()
    opt.zero_grad()


def fresh_adam_step(t, beta1=BETAS[0], beta2=BETAS[1]):
    """|first step| / lr of AdamW from zeroed moments at global step t (eps and decay of a zero weight aside)."""
    return (1 - beta1) / (1 - beta1 ** t) * math.sqrt(1 - beta2 ** t) / math.sqrt(1 - beta2)


@pytest.mark.parametrize("reset", [True, False])
def test_reset_moments_zeroes_or_keeps_the_moments_of_moved_weights(reset):
    update_at, lr = 40, 1e-2
    model, opt, ds, x, y = train_until_update(reset, update_at, lr)
    params = dict(model.named_parameters())
    before_masks = ds.masks
    # The update step, by hand, to see the moments between the optimizer step and the update.
    i = ((update_at - 1) * 16) % len(x)
    F.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
    opt.step()
    moments = {n: {k: opt.state[params[n]][k].clone() for k in ("exp_avg", "exp_avg_sq")} for n in ds.masks}
    log = ds.step()
    opt.zero_grad()
    assert log is not None and log["pruned"] > 0
    grown_total = 0
    for n, mask in ds.masks.items():
        grown, pruned = mask & ~before_masks[n], before_masks[n] & ~mask
        grown_total += int(grown.sum())
        for k in ("exp_avg", "exp_avg_sq"):
            now = opt.state[params[n]][k]
            moved = grown | pruned
            if reset:
                assert torch.all(now[moved] == 0), (n, k)
            else:
                assert torch.equal(now, moments[n][k]), (n, k)
                # Gradients reach masked weights, so an inactive weight's moments are warm when it regrows
                # (all but those of units cut off by the masks).
                assert (now[grown] != 0).float().mean() > 0.8, (n, k)
            assert torch.equal(now[~moved], moments[n][k][~moved])
    assert grown_total > 0

    # The first AdamW step of a regrown weight (it starts at zero).
    i = (update_at * 16) % len(x)
    F.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
    grads = {n: params[n].grad.clone() for n in ds.masks}
    opt.step()
    ds.step()
    opt.zero_grad()
    t = update_at + 1
    grown = {n: ds.masks[n] & ~before_masks[n] for n in ds.masks}
    first = torch.cat([params[n].detach()[grown[n]].abs() for n in ds.masks]) / lr
    if reset:
        # From zeroed moments the step is AdamW's very first step, fresh_adam_step(t) * lr for every weight
        # whatever its gradient, up to eps (a unit whose outgoing weights are all masked passes none back).
        g = torch.cat([grads[n][grown[n]] for n in ds.masks]).double().abs()
        expected = (1 - BETAS[0]) * g / (1 - BETAS[0] ** t) / (
            (1 - BETAS[1]) ** 0.5 * g / (1 - BETAS[1] ** t) ** 0.5 + 1e-8)
        assert torch.allclose(first.double(), expected, rtol=1e-4, atol=1e-6)
        assert (g > 1e-4).float().mean() > 0.5
        assert torch.allclose(first[g > 1e-4], torch.full_like(first[g > 1e-4], fresh_adam_step(t)), rtol=1e-3)
    else:
        # From warm moments each weight's step follows its own gradient history.
        assert first.std() > 0.01 and not torch.allclose(first, torch.full_like(first, fresh_adam_step(t)), rtol=0.05)


def test_a_zeroed_regrown_weight_steps_about_3x_in_a_long_run():
    # At SLaK-T's first update (step 2000) and later ones, zeroed moments give (1 - b1) / sqrt(1 - b2) ~ 3.16 lr,
    # less the bias correction still left on the second moment: 2.94 lr at step 2000.
    assert fresh_adam_step(2001) == pytest.approx(2.94, abs=0.01)
    assert fresh_adam_step(10 ** 6) == pytest.approx(3.162, abs=0.001)
    assert fresh_adam_step(101) == pytest.approx(0.98, abs=0.01)  # SLaK-S/B's first update (u = 100)


@pytest.mark.slow
def test_zeroed_moments_step_a_regrown_weight_harder_than_warm_ones_at_step_2000():
    steps = {}
    for reset in (True, False):
        model, opt, ds, x, y = train_until_update(reset, 2000, lr=1e-3)
        before = ds.masks
        step(model, opt, ds, x, y, 1999)
        step(model, opt, ds, x, y, 2000)
        params = dict(model.named_parameters())
        steps[reset] = torch.cat([params[n].detach()[ds.masks[n] & ~before[n]].abs() for n in ds.masks]) / 1e-3
    live = steps[True] > 0  # both runs regrow the same weights; units cut off by the masks get no gradient
    assert live.float().mean() > 0.5
    assert steps[True][live].median().item() == pytest.approx(fresh_adam_step(2001), rel=1e-3)
    assert steps[True][live].mean() > 1.5 * steps[False][live].mean()


# ------------------------------------------------------------------------------------------- EMA
def released_ema_update(ema: dict, model: dict, masks: dict, decay: float) -> None:
    """The released sparse-aware ModelEma.update (model_sema.py), as a formula on state dicts."""
    for k, e in ema.items():
        m = model[k]
        if k in masks:
            mask = masks[k].to(e.dtype)
            fresh = ((e != 0) ^ masks[k]) & masks[k]
            e.copy_((e * decay + m * (1 - decay)) * mask + fresh.to(e.dtype) * decay * m)
        elif e.is_floating_point():
            e.copy_(e * decay + m * (1 - decay))
        else:
            e.copy_(m)


def ema_run(steps, save_at=None, state=None):
    timm_utils = pytest.importorskip("timm.utils")
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=BETAS)
    ds = DynamicSparsity(model, opt, sparsity=0.5, init="uniform", update_frequency=3, prune_rate=0.5,
                         total_steps=30, seed=0, regrow_pruned=True, reset_moments=False)
    ema = timm_utils.ModelEmaV3(model, decay=0.9)
    x, y = data()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema.module.load_state_dict(state["ema"])
        ds.load_state_dict(state["sparse"])
        start = state["step"]
    saved = None
    for s in range(start, steps):
        step(model, opt, ds, x, y, s)
        ema.update(model, step=s + 1)
        ds.apply_to_ema(ema.module)
        if save_at == s + 1:
            saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "step": s + 1,
                                   "ema": ema.module.state_dict(), "sparse": ds.state_dict()})
    return model, ds, ema, saved


def test_apply_to_ema_is_the_released_sparse_aware_ema():
    timm_utils = pytest.importorskip("timm.utils")
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=BETAS)
    ds = DynamicSparsity(model, opt, sparsity=0.5, init="uniform", update_frequency=3, prune_rate=0.5,
                         total_steps=30, seed=0, regrow_pruned=True, reset_moments=False)
    ema = timm_utils.ModelEmaV3(model, decay=0.9)
    plain = timm_utils.ModelEmaV3(model, decay=0.9)  # the EMA with masking only (apply_to)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data()
    copied, prev_grown = 0, {}
    for s in range(12):
        before = ds.masks
        step(model, opt, ds, x, y, s)
        for e in (ema, plain):
            e.update(model, step=s + 1)
        ds.apply_to_ema(ema.module)
        ds.apply_to(plain.module)
        released_ema_update(reference, model.state_dict(), ds.masks, ema.get_decay(s + 1))
        for k, v in ema.module.state_dict().items():
            assert torch.allclose(v, reference[k], rtol=1e-5, atol=1e-7), (s, k)
        params, ema_params = dict(model.named_parameters()), dict(ema.module.named_parameters())
        for n, mask in ds.masks.items():
            assert torch.all(ema_params[n][~mask] == 0)
            # Weights grown at the previous step left zero in the model: now their EMA is the model's value.
            if prev_grown and s % 3 == 0:
                grown = prev_grown[n]
                assert torch.equal(ema_params[n][grown], params[n].detach()[grown])
                copied += int(grown.sum())
        prev_grown = {n: m & ~before[n] for n, m in ds.masks.items()}
    assert copied > 0
    # Averaging up from zero leaves the plain EMA far from the model on the regrown weights.
    diff_plain = sum((p - q).abs().sum() for p, q in zip(plain.module.parameters(), model.parameters()))
    diff_aware = sum((p - q).abs().sum() for p, q in zip(ema.module.parameters(), model.parameters()))
    assert diff_aware < diff_plain


def test_apply_to_ema_resumes_exactly():
    _, _, straight, _ = ema_run(10)
    _, _, _, saved = ema_run(10, save_at=3)  # step 3 is an update: its grown weights are pending
    assert saved["sparse"]["ema_pending"]
    _, _, resumed, _ = ema_run(10, state=saved)
    for (k, a), b in zip(straight.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(a, b), k
    # A state written before the EMA tracking existed loads, with nothing pending: the regrown weights' EMA
    # then averages up from zero.
    old = {k: v for k, v in saved["sparse"].items() if k not in ("ema_pending", "ema_kept")}
    _, _, from_old, _ = ema_run(4, state={**saved, "sparse": old})
    _, _, exact, _ = ema_run(4, state=saved)
    assert not all(torch.equal(a, b) for a, b in zip(from_old.module.parameters(), exact.module.parameters()))


def test_without_an_ema_nothing_is_tracked():
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ds = DynamicSparsity(model, opt, sparsity=0.5, init="uniform", update_frequency=1, prune_rate=0.5,
                         total_steps=10, seed=0)
    x, y = data()
    for s in range(3):
        step(model, opt, ds, x, y, s)
    assert ds.last_update["regrown"] > 0
    assert ds.state_dict()["ema_pending"] == {} and not ds.state_dict()["ema_kept"]


# -------------------------------------------------------------------------------------------- FD
def test_fd_with_equal_channels_has_no_projector_unless_always():
    auto = build_distill_loss("nkd+fd", student_channels=8, teacher_channels=8)
    assert auto.fd.projector is None and list(auto.parameters()) == [] and auto.state_dict() == {}
    always = build_distill_loss("nkd+fd", student_channels=8, teacher_channels=8, fd_projector="always")
    assert [tuple(p.shape) for p in always.parameters()] == [(8, 8, 1, 1), (8,)]
    other = build_distill_loss("kd+fd", student_channels=8, teacher_channels=12, fd_projector="auto")
    assert tuple(other.fd.projector.weight.shape) == (12, 8, 1, 1)
    student, teacher = torch.randn(2, 8, 2, 2), torch.randn(2, 8, 4, 4)
    expected = F.smooth_l1_loss(F.interpolate(student, size=(4, 4), mode="bilinear", align_corners=False),
                                teacher, beta=2.0)
    assert auto.fd(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ReproError, match="auto, always"):
        build_distill_loss("fd", student_channels=8, teacher_channels=8, fd_projector="never")
    with pytest.raises(ReproError, match="does not use fd_projector"):
        build_distill_loss("nkd", fd_projector="auto")


def test_fd_checkpoints_load_and_a_projector_mismatch_says_what_to_set():
    def make(mode):
        return build_distill_loss("nkd+fd", student_channels=8, teacher_channels=8, fd_projector=mode)

    always, auto = make("always"), make("auto")
    again = make("always")
    again.load_state_dict(always.state_dict())
    assert torch.equal(again.fd.projector.weight, always.fd.projector.weight)
    make("auto").load_state_dict(auto.state_dict())
    with pytest.raises(ReproError, match="distill.fd_projector=always"):
        auto.load_state_dict(always.state_dict())
    with pytest.raises(ReproError, match="distill.fd_projector=auto"):
        make("always").load_state_dict(auto.state_dict())
