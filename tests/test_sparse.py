"""Tests for repro.sparse: exact densities, prune-and-regrow, AMP, EMA, resume, DDP (tiny models, CPU)."""
import copy
import io
import logging
import math
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from repro.errors import ReproError
from repro.sparse import DynamicSparsity, cosine_prune_rate, erk_counts, official_recipe


class Tiny(nn.Module):
    """Stem conv, a depthwise 'large_kernel' conv, an MLP and a head: every kind of masked tensor."""

    def __init__(self, classes: int = 5, drop: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.large_kernel = nn.Conv2d(8, 8, 7, padding=3, groups=8, bias=False)
        self.drop = nn.Dropout(drop)
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = (x + self.large_kernel(x)).mean((2, 3))
        x = x + self.fc2(F.gelu(self.fc1(self.drop(x))))
        return self.head(x)


MASKABLE = ["stem.weight", "large_kernel.weight", "fc1.weight", "fc2.weight", "head.weight"]


def make(seed=0, drop=0.0):
    torch.manual_seed(seed)
    return Tiny(drop=drop)


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def sparse(model, opt=None, **kw):
    args = dict(sparsity=0.4, init="uniform", update_frequency=2, prune_rate=0.5, total_steps=20, seed=0)
    args.update(kw)
    if args["init"] == "snip" and "init_batch" not in args:
        args["init_batch"] = batch(100)
    return DynamicSparsity(model, opt, **args)


def train_step(model, opt, ds, x, y):
    F.cross_entropy(model(x), y).backward()
    opt.step()
    log = ds.step()
    opt.zero_grad()
    return log


def assert_masked(model, ds):
    params = dict(model.named_parameters())
    for name, mask in ds.masks.items():
        assert mask.dtype == torch.bool and mask.shape == params[name].shape
        assert torch.all(params[name][~mask] == 0), name


# ------------------------------------------------------------------------------------------------ init
def test_uniform_init_gives_exact_per_layer_counts():
    model = make()
    ds = sparse(model, init="uniform", sparsity=0.3)
    params = dict(model.named_parameters())
    assert sorted(ds.masks) == sorted(MASKABLE)
    for name in MASKABLE:
        expected = math.floor(0.7 * params[name].numel() + 0.5)
        assert int(ds.masks[name].sum()) == expected
        assert int((params[name] != 0).sum()) == expected  # init weights are nonzero, so weights == mask
    assert_masked(model, ds)


def released_erk_densities(shapes, density):
    """The released code's ERK loop (sparse_core.py), transcribed: densities before any rounding."""
    dense = set()
    while True:
        rhs, divisor, raw = 0.0, 0.0, {}
        for i, shape in enumerate(shapes):
            n = math.prod(shape)
            if i in dense:
                rhs -= n * (1 - density)
            else:
                rhs += n * density
                raw[i] = sum(shape) / n
                divisor += raw[i] * n
        epsilon = rhs / divisor
        top = max(raw.values())
        if top * epsilon <= 1:
            return [1.0 if i in dense else epsilon * raw[i] for i in range(len(shapes))]
        dense.update(i for i, r in raw.items() if r == top)


def test_erk_init_is_exact_overall_and_follows_the_released_formula():
    model = make()
    params = dict(model.named_parameters())
    shapes = [tuple(params[n].shape) for n in MASKABLE]
    ideal = dict(zip(MASKABLE, released_erk_densities(shapes, 0.6)))
    ds = sparse(model, init="erk", sparsity=0.4)
    total = sum(params[n].numel() for n in MASKABLE)
    active = {n: int((params[n] != 0).sum()) for n in MASKABLE}
    assert sum(active.values()) == math.floor(0.6 * total + 0.5)
    for n in MASKABLE:
        assert abs(active[n] - ideal[n] * params[n].numel()) < 1.0, n
        assert (n in ds.masks) == (ideal[n] < 1.0)
    assert "head.weight" not in ds.masks and torch.all(params["head.weight"] != 0)


def test_erk_counts_cap_dense_layers_and_redistribute():
    shapes = [(4, 3), (100, 100), (200, 100)]
    counts = erk_counts(shapes, 0.5)
    numels = [12, 10000, 20000]
    assert sum(counts) == math.floor(0.5 * sum(numels) + 0.5)
    assert counts[0] == 12  # raw density 7/12 * epsilon > 1 -> dense
    assert all(0 <= c <= n for c, n in zip(counts, numels))


def test_snip_init_matches_a_direct_global_top_k():
    model, x_y = make(), batch(100)
    reference = copy.deepcopy(model)
    reference.train()
    loss = F.cross_entropy(reference(x_y[0]), x_y[1])
    params = dict(reference.named_parameters())
    grads = torch.autograd.grad(loss, [params[n] for n in MASKABLE])
    scores = {n: (params[n] * g).abs().flatten() for n, g in zip(MASKABLE, grads)}
    flat = torch.cat(list(scores.values()))
    keep = math.floor(0.6 * flat.numel() + 0.5)
    threshold = flat.sort(descending=True).values[keep - 1]
    expected = {n: int((s >= threshold).sum()) for n, s in scores.items()}
    assert sum(expected.values()) == keep  # no ties in this model

    ds = sparse(model, init="snip", init_batch=x_y)
    model_params = dict(model.named_parameters())
    for n in MASKABLE:
        active = int((model_params[n] != 0).sum())
        assert active == expected[n], n
        if n in ds.masks:
            assert int(ds.masks[n].sum()) == expected[n]
        else:
            assert expected[n] == model_params[n].numel()
    assert_masked(model, ds)


def test_init_log_reports_the_overall_density_next_to_the_masked_one(caplog):
    """Layers SNIP leaves dense count towards the target; the log must not compare the masked tensors' lower
    density with the overall target."""
    with caplog.at_level(logging.INFO, logger="repro.sparse"):
        ds = sparse(make(), init="snip", init_batch=batch(100), dense_cutoff=0.9)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Sparse init"))
    overall = float(line.split("density ")[1].split()[0])
    assert overall == pytest.approx(0.6, abs=1e-3) and "(target 0.6000)" in line
    assert f"{len(ds.masks)} of them masked, at density {ds.density():.4f}" in line


def test_snip_leaves_weights_grads_buffers_mode_and_rng_untouched():
    model = make(drop=0.5)
    model.eval()
    F.cross_entropy(model(batch(1)[0]), batch(1)[1]).backward()
    model.bn.running_mean.fill_(0.25)
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before_buffers = {n: b.clone() for n, b in model.named_buffers()}
    rng = torch.get_rng_state()
    expected_draw = torch.rand(5)
    torch.set_rng_state(rng)

    ds = DynamicSparsity(model, None, sparsity=0.4, init="snip", update_frequency=None, prune_rate=0.5,
                         total_steps=10, seed=0, init_batch=batch(2))
    assert torch.equal(torch.rand(5), expected_draw)
    assert not model.training and not model.drop.training
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, before_grads[n])
        mask = ds.masks.get(n)
        assert torch.equal(p.detach(), before_params[n] if mask is None else before_params[n] * mask)
    for n, b in model.named_buffers():
        assert torch.equal(b, before_buffers[n]), n


def test_same_seed_same_masks_different_seed_different_masks():
    for init in ("snip", "erk", "uniform"):
        a, b, c = (sparse(make(), init=init, seed=s) for s in (7, 7, 8))
        assert a.masks.keys() == b.masks.keys() == c.masks.keys()
        assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
        assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_layer_selection_modes():
    model = make()
    assert list(sparse(model, layers="large_kernel").masks) == ["large_kernel.weight"]
    assert sorted(sparse(make(), layers=r"^fc\d").masks) == ["fc1.weight", "fc2.weight"]

    class Wrapper(nn.Module):  # stands in for DistributedDataParallel: names gain a 'module.' prefix
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert sorted(sparse(Wrapper(make())).masks) == sorted(MASKABLE)


def test_sparsity_zero_is_a_no_op():
    model = make()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds = sparse(model, sparsity=0.0, init="snip", init_batch=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for _ in range(3):
        assert train_step(model, opt, ds, *batch(0)) is None
    assert ds.masks == {} and ds.density() == 1.0 and ds.steps == 3
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    ds.apply_to(make())


# --------------------------------------------------------------------------------------------- updates
def test_prune_rate_matches_the_official_cosine_decay():
    # The released CosineDecay: CosineAnnealingLR(T_max, eta_min=0.005) stepped before each read.
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40, 0.005)
    for step in range(1, 41):
        opt.step()
        sched.step()
        assert cosine_prune_rate(step, 0.5, 0.005, 40) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
    assert cosine_prune_rate(60, 0.5, 0.005, 40) == pytest.approx(0.005)


@pytest.mark.parametrize("growth", ["random", "gradient"])
def test_update_prunes_smallest_and_regrows_exactly_as_many(growth):
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    ds = sparse(model, opt, growth=growth, update_frequency=3, total_steps=12)
    params = dict(model.named_parameters())
    counts = {n: int(m.sum()) for n, m in ds.masks.items()}
    updates = 0
    for step in range(1, 13):
        x, y = batch(step)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        old = ds.masks
        weights = {n: params[n].detach().clone() * old[n] for n in old}
        grads = {n: params[n].grad.clone() for n in old}
        log = ds.step()
        assert_masked(model, ds)
        if step % 3:
            assert log is None
            continue
        updates += 1
        rate = cosine_prune_rate(step, 0.5, 0.005, 12)
        assert log["prune_rate"] == pytest.approx(rate) and ds.last_update is log
        for n, new in ds.masks.items():
            assert int(new.sum()) == counts[n]  # conserved exactly
            k = math.ceil(rate * counts[n])
            pruned, grown = old[n] & ~new, new & ~old[n]
            assert int(pruned.sum()) == k == int(grown.sum()) == log["layers"][n]["pruned"]
            # The pruned weights are exactly the k smallest magnitudes among the active ones.
            active = old[n].flatten().nonzero().squeeze(1)
            order = weights[n].flatten()[active].abs().argsort()
            assert set(active[order[:k]].tolist()) == set(pruned.flatten().nonzero().squeeze(1).tolist())
            # Growth happens only where weights were inactive before the update (just-pruned excluded).
            assert not torch.any(grown & old[n])
            if growth == "gradient":
                inactive = (~old[n]).flatten().nonzero().squeeze(1)
                top = grads[n].flatten()[inactive].abs().argsort(descending=True)[:k]
                assert set(inactive[top].tolist()) == set(grown.flatten().nonzero().squeeze(1).tolist())
            assert torch.all(params[n][grown] == 0)  # regrown weights start at zero
    assert updates == 4
    ever = ds.ever_active()
    assert all(ever[n] > ds.layer_density()[n] for n in ds.masks)
    assert ds.last_update["ever_active"] == pytest.approx(
        sum(ever[n] * params[n].numel() for n in ever) / sum(params[n].numel() for n in ever))


def test_updates_are_logged(caplog):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = sparse(model, opt, update_frequency=1)
    with caplog.at_level(logging.INFO, logger="repro.sparse"):
        log = train_step(model, opt, ds, *batch(0))
    assert f"moved {log['pruned']} weights" in caplog.text and "Sparse update 1 at step 1" in caplog.text
    assert set(log["layers"]["fc1.weight"]) == {"density", "pruned", "regrown", "reactivated", "ever_active"}


def test_regrow_pruned_follows_the_released_code():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = sparse(model, opt, regrow_pruned=True, update_frequency=1, total_steps=50)
    params = dict(model.named_parameters())
    counts = {n: int(m.sum()) for n, m in ds.masks.items()}
    reactivated = 0
    for step in range(1, 6):
        x, y = batch(step)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        kept = {n: params[n].detach() * m for n, m in ds.masks.items()}
        log = ds.step()
        opt.zero_grad()
        for n, mask in ds.masks.items():
            assert int(mask.sum()) == counts[n]
            reactivated += log["layers"][n]["reactivated"]
            # A weight pruned and drawn again stays active with its value, as in the released code; weights
            # grown at inactive positions start at zero.
            assert torch.equal(params[n][mask], kept[n][mask])
    assert reactivated > 0


def test_growth_falls_back_to_just_pruned_positions_when_too_few_are_inactive():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = sparse(model, opt, sparsity=0.1, prune_rate=0.9, update_frequency=1, total_steps=1000)
    counts = {n: int(m.sum()) for n, m in ds.masks.items()}
    train_step(model, opt, ds, *batch(0))
    assert {n: int(m.sum()) for n, m in ds.masks.items()} == counts
    assert_masked(model, ds)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_optimizer_moments_of_pruned_and_regrown_weights_are_zeroed(kind):
    model = make()
    opt = (torch.optim.AdamW(model.parameters(), lr=0.01) if kind == "adamw"
           else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    keys = ["exp_avg", "exp_avg_sq"] if kind == "adamw" else ["momentum_buffer"]
    ds = sparse(model, opt, update_frequency=2)
    params = dict(model.named_parameters())
    train_step(model, opt, ds, *batch(0))
    F.cross_entropy(model(batch(1)[0]), batch(1)[1]).backward()
    opt.step()
    old = ds.masks
    ds.step()
    for n, new in ds.masks.items():
        changed, steady = old[n] != new, old[n] & new
        assert changed.any()
        for key in keys:
            state = opt.state[params[n]][key]
            assert torch.all(state[changed] == 0), (n, key)
            assert torch.all(state[steady] != 0), (n, key)  # untouched elsewhere


def test_channels_last_weights_and_a_dtype_change_after_construction():
    model = make().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ds = sparse(model, opt, update_frequency=2)
    counts = {n: int(m.sum()) for n, m in ds.masks.items()}
    for step in range(4):
        old = ds.masks
        train_step(model, opt, ds, *batch(step))
    buffer = opt.state[model.stem.weight]["momentum_buffer"]
    assert buffer.is_contiguous(memory_format=torch.channels_last) and not buffer.is_contiguous()
    changed = old["stem.weight"] != ds.masks["stem.weight"]
    assert changed.any() and torch.all(buffer[changed] == 0)
    assert model.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert {n: int(m.sum()) for n, m in ds.masks.items()} == counts
    assert_masked(model, ds)
    model.double()  # parameters change dtype: the cached multipliers follow
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds.optimizer = opt
    train_step(model, opt, ds, batch(9)[0].double(), batch(9)[1])
    assert_masked(model, ds)


def test_gradient_growth_without_grads_raises():
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = sparse(model, opt, growth="gradient", update_frequency=1)
    F.cross_entropy(model(batch(0)[0]), batch(0)[1]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    with pytest.raises(ReproError, match="zero_grad"):
        ds.step()


def test_masks_hold_under_bf16_autocast_with_a_grad_scaler():
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler is not available in this torch")
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    ds = sparse(model, opt, update_frequency=2)
    for step in range(1, 6):
        x, y = batch(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if step == 3:
            model.fc1.weight.grad[0, 0] = float("inf")  # the scaler skips this step
        scaler.step(opt)
        scaler.update()
        ds.step()
        opt.zero_grad()
        assert_masked(model, ds)
    assert ds.steps == 5 and ds.last_update["step"] == 4


def test_apply_to_masks_an_ema_copy():
    timm_utils = pytest.importorskip("timm.utils")
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    ema = timm_utils.ModelEmaV3(model, decay=0.5)
    ds = sparse(model, opt, update_frequency=2)
    for step in range(1, 5):
        train_step(model, opt, ds, *batch(step))
        ema.update(model)
        ds.apply_to(ema)  # wrapper with .module
        assert_masked(ema.module, ds)
    prefixed = nn.Module()
    prefixed.module = copy.deepcopy(model)  # names with a 'module.' prefix
    with torch.no_grad():
        for p in prefixed.parameters():
            p.fill_(1.0)
    ds.apply_to(prefixed)
    assert_masked(prefixed.module, ds)
    with pytest.raises(ReproError, match="lacks"):
        ds.apply_to(nn.Linear(3, 3))


# ------------------------------------------------------------------------------------------- resume
def run(model, opt, ds, steps):
    for step in steps:
        train_step(model, opt, ds, *batch(step))


def build(seed):
    model = make(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    return model, opt, sparse(model, opt, init="uniform", seed=seed, update_frequency=2, total_steps=10)


def test_state_round_trip_continues_bit_identically():
    model, opt, ds = build(0)
    run(model, opt, ds, range(10))

    model2, opt2, ds2 = build(0)
    run(model2, opt2, ds2, range(5))
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sparse": ds2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["sparse"]["masks"]["stem.weight"].dtype == torch.uint8  # packed bits

    model3, opt3, ds3 = build(1)  # different weights and masks until the state is loaded
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    ds3.load_state_dict(saved["sparse"])
    assert ds3.steps == 5 and all(torch.equal(ds3.masks[n], ds2.masks[n]) for n in ds2.masks)
    run(model3, opt3, ds3, range(5, 10))

    for (n, p), p3 in zip(model.named_parameters(), model3.parameters()):
        assert torch.equal(p, p3), n
    assert all(torch.equal(ds.masks[n], ds3.masks[n]) for n in ds.masks)
    a, b = ds.state_dict(), ds3.state_dict()
    assert torch.equal(a["generator"], b["generator"]) and a["step"] == b["step"] == 10
    assert all(torch.equal(a["ever_active"][n], b["ever_active"][n]) for n in a["ever_active"])
    assert ds.last_update["layers"] == ds3.last_update["layers"]


def test_loading_a_state_for_other_masks_raises():
    _, _, ds = build(0)
    other = sparse(make(), layers="large_kernel")
    with pytest.raises(ReproError, match="missing from the checkpoint: stem.weight"):
        ds.load_state_dict(other.state_dict())
    with pytest.raises(ReproError, match="format"):
        ds.load_state_dict({"masks": {}})


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.0), r"sparsity must be a number in \[0.0, 1.0\)"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(init="grasp"), r"Unknown init 'grasp'.*'snip', 'erk', 'uniform'"),
    (dict(growth="momentum"), r"Unknown growth.*'random', 'gradient'"),
    (dict(prune="SET"), r"Unknown prune.*'magnitude'"),
    (dict(layers="no_such_layer"), r"selects no weight.*'all'.*'large_kernel'"),
    (dict(layers="bn"), "selects no weight"),  # only 1-D parameters match
    (dict(layers="("), "regular expression"),
    (dict(init="snip", init_batch=None), "init_batch"),
    (dict(update_frequency=0), "update_frequency"),
    (dict(prune_rate=0.0), "prune_rate"),
    (dict(total_steps=0), "total_steps"),
])
def test_bad_arguments_raise(kwargs, message):
    args = dict(sparsity=0.4, init="uniform", update_frequency=2, prune_rate=0.5, total_steps=20, seed=0)
    args.update(kwargs)
    with pytest.raises(ReproError, match=message):
        DynamicSparsity(make(), None, **args)


def test_official_recipe():
    tiny = official_recipe("slak_tiny")
    assert (tiny["update_frequency"], tiny["prune_rate"], tiny["sparsity"]) == (2000, 0.5, 0.4)
    assert official_recipe("SLaK_small")["update_frequency"] == 100
    assert official_recipe("slak_base")["prune_rate"] == official_recipe("slak_large")["prune_rate"] == 0.3
    assert tiny["regrow_pruned"] and tiny["dense_cutoff"] == 0.99  # as the released code behaves
    assert official_recipe("slak_micro") == tiny
    assert (tiny["init"], tiny["growth"], tiny["prune"]) == ("snip", "random", "magnitude")
    with pytest.raises(ReproError, match="slak_tiny"):
        official_recipe("resnet50")
    model = make()
    DynamicSparsity(model, None, **official_recipe("slak_tiny"), total_steps=100, seed=0, init_batch=batch(0))


def test_slak_micro_large_kernel_branches():
    models = pytest.importorskip("repro.models")
    if not hasattr(models, "create_model"):
        pytest.skip("repro.models.create_model is not available yet")
    model = models.create_model("slak_micro", num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ds = DynamicSparsity(model, opt, sparsity=0.4, init="erk", update_frequency=1, prune_rate=0.3,
                         total_steps=10, seed=0, layers="large_kernel")
    assert ds.masks and all("large_kernel" in n and m.dim() == 4 for n, m in ds.masks.items())
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    train_step(model, opt, ds, x, y)
    assert_masked(model, ds)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_masks_are_the_same_on_cpu_and_gpu():
    cpu = sparse(make(), init="erk", seed=5)
    gpu = sparse(make().cuda(), init="erk", seed=5)
    assert all(torch.equal(cpu.masks[n], gpu.masks[n].cpu()) for n in cpu.masks)


# ----------------------------------------------------------------------------------------------- DDP
_COLLECTIVES = ("broadcast", "all_reduce", "all_gather", "all_gather_object", "broadcast_object_list", "reduce",
                "gather", "scatter", "reduce_scatter", "all_to_all", "barrier", "send", "recv", "isend", "irecv")


def _ddp_worker(rank, world, folder):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    torch.set_num_threads(1)
    calls = {"other": 0, "init": 0, "steps": 0}  # collectives counted inside DynamicSparsity calls only
    phase = ["other"]
    for fname in _COLLECTIVES:
        original = getattr(dist, fname, None)
        if original is None:
            continue

        def counted(*args, _original=original, **kwargs):
            calls[phase[0]] += 1
            return _original(*args, **kwargs)
        setattr(dist, fname, counted)
    model = nn.parallel.DistributedDataParallel(make(0))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    phase[0] = "init"
    ds = DynamicSparsity(model, opt, sparsity=0.4, init="snip", init_batch=batch(10 + rank), update_frequency=2,
                         prune_rate=0.5, growth="gradient", total_steps=8, seed=3)
    initial = {n: m.clone() for n, m in ds.masks.items()}
    for step in range(8):
        x, y = batch(100 * rank + step)  # different data on each rank
        phase[0] = "other"
        F.cross_entropy(model(x), y).backward()
        opt.step()
        phase[0] = "steps"
        ds.step()
        opt.zero_grad()
    torch.save({"masks": ds.masks, "initial": initial, "calls": calls,
                "weights": {n: p.detach() for n, p in model.module.named_parameters()}},
               os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_ranks_end_with_equal_masks_without_communication():
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_ddp_worker, args=(2, folder), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    assert r0["calls"]["steps"] == r1["calls"]["steps"] == 0  # nothing sent by DynamicSparsity while training
    assert r0["calls"]["init"] == 1  # SNIP counts of rank 0, broadcast once
    assert r0["masks"].keys() == r1["masks"].keys() and r0["masks"]
    assert all(torch.equal(r0["masks"][n], r1["masks"][n]) for n in r0["masks"])
    assert all(torch.equal(r0["weights"][n], r1["weights"][n]) for n in r0["weights"])
    assert any(not torch.equal(r0["masks"][n], r0["initial"][n]) for n in r0["masks"])  # updates happened
