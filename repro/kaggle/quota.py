"""The quota a whole plan needs: GPU-hours, Kaggle sessions and weeks, with and without cohorts and packing.

Every figure is an estimate built from measured per-image costs, at the plan's batch and image size:

- s(model): one training step of a student (forward, backward, AdamW update) per image;
- t(model): one forward of a teacher per image (inference mode, deploy form, as `repro.distill.Teacher` runs it).

A single run costs t(teacher) + s(student) per image, a cohort t(teacher) + the sum of its members' s (one batch,
one teacher forward, every member stepped: `repro.train.cohort`). Data loading is taken as hidden behind the
GPU by the DataLoader workers (a trial's metrics.jsonl shows it as `data_wait`), evaluation and saves as
`overhead` (10%). A run of E epochs then takes E x images per epoch x cost x (1 + overhead); a chain of
sessions ceil(hours / session budget) sessions, each charged its start-up (`session_overhead`: install, data,
final test). Packing N puts N runs (or cohorts) side by side in one session, one per GPU, grouped N by N in
plan order within each plan, as `repro kaggle prepare` does: a group lasts as long as its longest run, and
Kaggle charges a session's wall time whatever its GPU count, so the quota is the groups' time and the GPU-hours
the runs' own.

The costs come from `calibrate` (a few timed steps of each model on this machine's device, seconds on a GPU),
or, where timing here says little about the target (a busy CPU), from `flop_costs` (multiply-accumulates as
executed: 3 forwards for a training step, 1 for a teacher's deploy-form forward, so every model is taken to
reach the same FLOP/s). They are scaled to the target by anchors: run folders trained there (their summary.json
images_per_s against the cost predicted for the same run) or `MODEL=IMAGES_PER_S` figures, e.g. a trial on a
Kaggle T4. Without an anchor, timed figures are for this device, and multiply-accumulates give none.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import ReproError
from .sessions import DEFAULT_SESSION_BUDGET, _full_epoch_images, read_summary, session_budget_seconds

DEFAULT_WEEKLY_HOURS = 30.0  # Kaggle's free GPU quota, about 30 h a week (it varies)
DEFAULT_SESSION_OVERHEAD = "10m"


@dataclass
class Job:
    """One run of a plan as the estimate sees it: its members (a single run is a cohort of one)."""

    name: str
    students: list[tuple[str, str, bool]]  # (member name, student model, whether it distils)
    teacher: str | None  # the teacher's model, None without distillation
    epochs: int
    images_per_epoch: int
    batch: int
    img_size: int
    num_classes: int
    cohort: bool = False
    plan: str = ""  # the plan it comes from: packing groups the runs of one plan, as `repro kaggle prepare` does

    def cost_per_image(self, costs: dict) -> float:
        """Seconds per training image of the whole job (all members), from the calibrated costs."""
        distils = self.teacher and any(d for _, _, d in self.students)
        teacher = costs["forward"][self.teacher] if distils else 0.0  # one forward for the whole cohort
        return teacher + sum(costs["train"][model] for _, model, _ in self.students)

    def singles(self) -> list["Job"]:
        """The job's members, each as a run of its own (one trained alone runs no teacher)."""
        return [Job(name, [(name, model, d)], self.teacher if d else None, self.epochs, self.images_per_epoch,
                    self.batch, self.img_size, self.num_classes, plan=self.plan) for name, model, d in self.students]


# ------------------------------------------------------------------------------------------- the plan

def plan_jobs(plan_path: str | Path, teacher_models: dict[str, str] | None = None) -> list[Job]:
    """The training runs of a plan as Jobs (notebooks that train nothing are left out), in plan order."""
    from ..config import load_config
    from ..plan import check_cohort, load_plan

    plan = load_plan(plan_path)
    jobs = []
    for run in plan.runs:
        params = run.parameters
        if run.cohort is not None:
            cohort = check_cohort(params, deferred=lambda v: isinstance(v, str) and "kaggle-input:" in v)
            if cohort is None:
                raise ReproError(f"run '{run.name}': its cohort's base config is read on Kaggle only, so its cost "
                                 "cannot be estimated here")
            members = cohort.members
        elif "preset" in params or "config_file" in params:
            overrides = list(params.get("overrides") or []) + (
                [f"seed={params['seed']}"] if params.get("seed") is not None else [])
            members = [(run.name, load_config(None if params.get("config_file") else params.get("preset"),
                                              params.get("config_file"), overrides))]
        else:
            continue
        cfg = members[0][1]
        # A cohort runs its teacher when any member distils (all members share distill.teacher).
        distiller = next((c for _, c in members if c.distill.method), None)
        teacher = _teacher_model(distiller, Path(plan.path), teacher_models or {}) if distiller else None
        full = _full_epoch_images(asdict(cfg.data))
        images = min(cfg.data.train_limit, full or cfg.data.train_limit) if cfg.data.train_limit else full
        if not images:
            raise ReproError(f"run '{run.name}': data.name={cfg.data.name} has no known size; set data.train_limit "
                             "to its training images to estimate it")
        jobs.append(Job(run.name, [(name, c.model.name, bool(c.distill.method)) for name, c in members], teacher,
                        cfg.train.epochs,
                        int(images), cfg.train.batch_size * cfg.train.accum_steps, cfg.data.img_size,
                        cfg.model.num_classes or _classes(cfg.data.name), cohort=run.cohort is not None,
                        plan=str(plan.path)))
    return jobs


def _classes(dataset: str) -> int:
    return {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "digits": 10}.get(dataset, 100)


def _teacher_model(cfg, plan_path: Path, given: dict[str, str]) -> str:
    """The architecture of a run's teacher: distill.teacher_model, a local run folder's config, or the run of
    that name in a plan beside this one (a `kaggle-input:<run>` reference)."""
    import yaml

    from ..config import load_config
    from ..plan import load_plan

    ref = str(cfg.distill.teacher)
    if cfg.distill.teacher_model:
        return cfg.distill.teacher_model
    if ref in given:
        return given[ref]
    name = ref.split("kaggle-input:", 1)[1].strip("/").split("/")[-1] if "kaggle-input:" in ref else None
    if name in given:
        return given[name]
    folder = Path(ref)
    if name is None and (folder / "config.yaml").is_file():
        return (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("model", {}).get("name")
    if name is not None:
        for other in sorted(plan_path.parent.glob("*.yaml")):
            try:
                runs = load_plan(other).runs
            except ReproError:
                continue
            for run in runs:
                if run.name == name and run.cohort is None and "preset" in run.parameters:
                    return load_config(run.parameters["preset"], None,
                                       list(run.parameters.get("overrides") or [])).model.name
    raise ReproError(f"cannot tell the architecture of the teacher {ref!r} (not a run folder here, not a run of a "
                     f"plan in {plan_path.parent}); pass --teacher-model {name or ref}=MODEL")


# ------------------------------------------------------------------------------------------ calibration

def calibrate(students: Iterable[str], teachers: Iterable[str], *, batch: int, img_size: int, num_classes: int,
              device: str | None = None, precision: str = "auto", steps: int = 2) -> dict:
    """Per-image seconds of a training step of each student and a forward of each teacher on this device, from
    random inputs at `batch` and `img_size` (after one untimed warm-up step); the median of `steps`."""
    import platform

    import torch

    from ..device import resolve_device, resolve_precision
    from ..distill.teacher import Teacher
    from ..models import create_model
    from ..train.evaluate import autocast_context

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(dev)
    y = torch.randint(num_classes, (batch,), generator=gen).to(dev)

    def timed(step) -> float:
        step()  # allocation, cuDNN autotuning, lazy initialisation
        times = []  # the fastest step: other processes' load only ever adds time
        for _ in range(max(1, steps)):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        return min(times) / batch

    train, forward = {}, {}
    for name in dict.fromkeys(students):
        model = create_model(name, num_classes=num_classes, img_size=img_size).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(dev.type, enabled=prec == "fp16")

        def step(model=model, opt=opt, scaler=scaler):
            with autocast_context(dev, prec):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        train[name] = timed(step)
        del model, opt
    for name in dict.fromkeys(teachers):
        teacher = Teacher(create_model(name, num_classes=num_classes, img_size=img_size),
                          amp_dtype=None if prec == "fp32" else prec).to(dev)

        def step(teacher=teacher):
            with torch.inference_mode():
                teacher(x)
        forward[name] = timed(step)
        del teacher
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": where, "precision": prec, "batch": batch, "img_size": img_size, "steps": steps, "unit": "s",
            "train": train, "forward": forward}


def flop_costs(students: Iterable[str], teachers: Iterable[str], *, img_size: int, num_classes: int) -> dict:
    """Per-image costs in multiply-accumulates as executed (`repro.models.count_flops`): a training step counts
    3 forwards (the backward 2), a teacher forward 1, in its deploy form. A time scale needs an anchor."""
    from ..models import count_flops, create_model, reparameterize

    def macs(name: str, deploy: bool) -> float:
        model = create_model(name, num_classes=num_classes, img_size=img_size).eval()
        return count_flops(reparameterize(model) if deploy else model, img_size, as_executed=True)["dense"]

    return {"device": "multiply-accumulates (repro.models.count_flops, as executed)", "precision": "-",
            "batch": None, "img_size": img_size, "steps": None, "unit": "MAC",
            "train": {n: 3 * macs(n, False) for n in dict.fromkeys(students)},
            "forward": {n: macs(n, True) for n in dict.fromkeys(teachers)}}


# --------------------------------------------------------------------------------------------- anchors

@dataclass
class Anchor:
    """A throughput measured on the target device: `model` (distilled from `teacher`) trained at images_per_s."""

    model: str
    images_per_s: float
    teacher: str | None = None
    source: str = ""
    measured_on: str | None = None


def parse_anchor(text: str, teacher_models: dict[str, str] | None = None) -> Anchor:
    """`MODEL=IMAGES_PER_S` or a run folder (its summary.json images_per_s and config.yaml)."""
    import yaml

    from ..models import list_models

    if "=" in text and not Path(text).exists():
        model, _, value = text.partition("=")
        try:
            ips = float(value)
        except ValueError:
            ips = -1.0
        if ips <= 0 or model not in list_models():
            raise ReproError(f"--anchor {text}: expected MODEL=IMAGES_PER_S with a model of `repro models` and a "
                             "positive throughput, or a run folder trained on the target device")
        return Anchor(model, ips, source=f"{model} at {ips:g} images/s (given)")
    summary = read_summary(text)
    if not summary.get("images_per_s"):
        raise ReproError(f"--anchor {text}: its summary.json has no images_per_s (too few steps); train a trial of a "
                         "few hundred steps on the target device first")
    cfg = yaml.safe_load((Path(text) / "config.yaml").read_text()) or {}
    distill = cfg.get("distill") or {}
    teacher = None
    if distill.get("method"):
        from ..config import load_config
        teacher = _teacher_model(load_config(None, Path(text) / "config.yaml"), Path(text), teacher_models or {})
    env = summary.get("env") or {}
    world = int(env.get("world_size") or 1)
    return Anchor(summary["model"] if "model" in summary else cfg["model"]["name"],
                  float(summary["images_per_s"]) / world, teacher=teacher,
                  source=f"{text} ({summary['images_per_s']} images/s" + (f" over {world} GPUs" if world > 1 else "")
                  + ")", measured_on=env.get("gpu") or env.get("device"))


def anchor_scale(anchors: list[Anchor], costs: dict) -> float:
    """Target seconds per calibrated second: the geometric mean over the anchors of measured / predicted."""
    ratios = []
    for a in anchors:
        predicted = costs["train"][a.model] + (costs["forward"][a.teacher] if a.teacher else 0.0)
        ratios.append((1.0 / a.images_per_s) / predicted)
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else 1.0


# --------------------------------------------------------------------------------------------- estimate

@dataclass
class Scenario:
    """One way to run the plan: cohorts or single runs, packed N to a session or not."""

    label: str
    cohorts: bool
    pack: int
    chains: int = 0
    gpu_hours: float = 0.0
    sessions: int = 0
    quota_hours: float = 0.0
    weeks: float = 0.0
    groups: list = field(default_factory=list)


def estimate(jobs: list[Job], costs: dict, *, scale: float = 1.0, pack: int = 2,
             budget: str | float = DEFAULT_SESSION_BUDGET, overhead: float = 0.10,
             session_overhead: str | float = DEFAULT_SESSION_OVERHEAD, weekly_hours: float = DEFAULT_WEEKLY_HOURS,
             seeds: int = 1) -> list[Scenario]:
    """The four scenarios (single runs / cohorts, unpacked / packed `pack`) for `jobs` repeated `seeds` times."""
    from ..train.budget import parse_duration

    budget_h = session_budget_seconds(budget) / 3600
    zero = str(session_overhead).strip().rstrip("hms") in ("0", "0.0")
    start_h = 0.0 if zero else parse_duration(session_overhead, flag="--session-overhead") / 3600
    if overhead < 0 or seeds < 1 or weekly_hours <= 0:
        raise ReproError(f"overhead must be >= 0, seeds >= 1 and the weekly quota > 0 (found {overhead}, {seeds}, "
                         f"{weekly_hours})")
    scenarios = [Scenario("single runs, one per session", False, 1), Scenario("cohorts, one per session", True, 1),
                 Scenario(f"single runs, packed {pack} per session", False, pack),
                 Scenario(f"cohorts, packed {pack} per session", True, pack)]
    for sc in scenarios:
        units = [j for _ in range(seeds) for job in jobs for j in ([job] if sc.cohorts else job.singles())]
        hours = [job_hours(j, costs, scale, overhead) for j in units]
        groups: list[list[int]] = []
        for i, unit in enumerate(units):  # `pack` at a time, in plan order, never across plans
            if groups and len(groups[-1]) < sc.pack and units[groups[-1][0]].plan == unit.plan:
                groups[-1].append(i)
            else:
                groups.append([i])
        sc.chains = len(groups)
        sc.gpu_hours = sum(hours)
        for g in groups:
            longest = max(hours[i] for i in g)
            n = max(1, math.ceil(longest / budget_h))
            sc.sessions += n
            sc.quota_hours += longest + n * start_h
            sc.groups.append({"runs": [units[i].name for i in g], "hours": [round(hours[i], 2) for i in g],
                              "sessions": n})
        sc.weeks = sc.quota_hours / weekly_hours
    return scenarios


def job_hours(job: Job, costs: dict, scale: float, overhead: float) -> float:
    """Hours of training for a job on one GPU of the target, evaluation and saves included."""
    steps = max(1, job.images_per_epoch // job.batch)
    return job.epochs * steps * job.batch * job.cost_per_image(costs) * scale * (1 + overhead) / 3600


def plan_quota(plans: list[str | Path], *, calibration: dict | None = None, anchors: Iterable[str] = (),
               teacher_models: dict[str, str] | None = None, device: str | None = None,
               calibration_batch: int | None = None, steps: int = 2, costs: str = "measured",
               **kwargs: Any) -> dict:
    """Jobs, per-image costs (timed here, `costs="measured"`, or multiply-accumulates, "flops"), scale and scenarios
    for `plans` (together); see `estimate` for the keywords."""
    jobs = [j for p in plans for j in plan_jobs(p, teacher_models)]
    if not jobs:
        raise ReproError("the plans list no training runs; nothing to estimate")
    anchor_list = [parse_anchor(a, teacher_models) for a in anchors]
    students = [m for j in jobs for _, m, _ in j.students] + [a.model for a in anchor_list]
    teachers = [j.teacher for j in jobs if j.teacher] + [a.teacher for a in anchor_list if a.teacher]
    shapes = {(j.batch, j.img_size) for j in jobs}
    if len(shapes) > 1:
        raise ReproError(f"the plans train at several batch sizes or image sizes {sorted(shapes)}; estimate them one "
                         "plan (one shape) at a time")
    batch, img_size = shapes.pop()
    if costs not in ("measured", "flops"):
        raise ReproError(f"costs are 'measured' (timed on this device) or 'flops' (multiply-accumulates), found "
                         f"{costs!r}")
    if calibration is None and costs == "flops":
        calibration = flop_costs(students, teachers, img_size=img_size, num_classes=jobs[0].num_classes)
    elif calibration is None:
        calibration = calibrate(students, teachers, batch=calibration_batch or batch, img_size=img_size,
                                num_classes=jobs[0].num_classes, device=device, steps=steps)
    if calibration.get("unit") == "MAC" and not anchor_list:
        raise ReproError("costs in multiply-accumulates give no hours without a measured throughput: pass --anchor "
                         "RUN_DIR (a run folder trained on the target) or --anchor MODEL=IMAGES_PER_S")
    missing = sorted(set(students) - set(calibration["train"])) + sorted(set(teachers) - set(calibration["forward"]))
    if missing:
        raise ReproError(f"the calibration has no cost for {', '.join(missing)}; calibrate again (without "
                         "--calibration) to measure them")
    scale = anchor_scale(anchor_list, calibration)
    return {"plans": [str(p) for p in plans], "jobs": [asdict(j) for j in jobs], "calibration": calibration,
            "anchors": [asdict(a) for a in anchor_list], "scale": scale,
            "scenarios": [asdict(s) for s in estimate(jobs, calibration, scale=scale, **kwargs)],
            "settings": kwargs}


def format_quota(result: dict) -> str:
    """The estimate as text: what was measured, what is estimated, and the four scenarios."""
    cal = result["calibration"]
    jobs = result["jobs"]
    members = sum(len(j["students"]) for j in jobs)
    cohorts = sum(1 for j in jobs if j["cohort"])
    s = result["settings"]
    lines = [f"plans: {', '.join(result['plans'])}",
             f"runs: {len(jobs)} ({cohorts} cohorts; {members} trained models in all)"
             + (f", x {s.get('seeds', 1)} seeds" if s.get("seeds", 1) > 1 else "")]
    if cal.get("unit") == "MAC":
        lines.append(f"counted, not timed: per-image costs in {cal['device']} at {cal['img_size']}x{cal['img_size']} "
                     "(training step = 3 forwards, teacher = 1 deploy-form forward):")
        value = lambda v: f"{v / 1e9:.3g} GMAC"  # noqa: E731
    else:
        lines.append(f"measured: per-image costs on {cal['device']} ({cal['precision']}, batch {cal['batch']}, "
                     f"{cal['img_size']}x{cal['img_size']}, fastest of {cal.get('steps', '?')} steps):")
        value = lambda v: f"{v * 1e3:.3g} ms"  # noqa: E731
    lines += ["  train step  " + ", ".join(f"{k} {value(v)}" for k, v in cal["train"].items()),
              "  teacher fwd " + (", ".join(f"{k} {value(v)}" for k, v in cal["forward"].items()) or "-")]
    if result["anchors"]:
        unit = "seconds per MAC" if cal.get("unit") == "MAC" else "measured / predicted"
        lines.append(f"scaled to the target by {result['scale']:.4g} ({unit}) from the measured throughput of: "
                     + "; ".join(a["source"] + (f", on {a['measured_on']}" if a.get("measured_on") else "")
                                 for a in result["anchors"]))
    else:
        lines.append("no anchor: the hours below are for the device above (--anchor RUN_DIR or MODEL=IMAGES_PER_S "
                     "measured on the target scales them)")
    head = f"{'':<36} {'chains':>6} {'GPU-hours':>10} {'sessions':>8} {'quota h':>8} {'weeks':>6}"
    lines += ["", "estimated (from the figures above):", head]
    for sc in result["scenarios"]:
        lines.append(f"{sc['label']:<36} {sc['chains']:>6} {sc['gpu_hours']:>10.2f} {sc['sessions']:>8} "
                     f"{sc['quota_hours']:>8.2f} {sc['weeks']:>6.2f}")
    first, last = result["scenarios"][0], result["scenarios"][-1]
    if first["quota_hours"] > 0:
        lines.append(f"{last['label']}: x{last['quota_hours'] / first['quota_hours']:.2f} the quota hours and "
                     f"x{last['gpu_hours'] / first['gpu_hours']:.2f} the GPU-hours of {first['label']}")
    budget = s.get("budget", DEFAULT_SESSION_BUDGET)
    lines.append(f"estimates, not measurements: sessions of {budget}, +{s.get('overhead', 0.1):.0%} for evaluation and "
                 f"saves, {s.get('session_overhead', DEFAULT_SESSION_OVERHEAD)} start-up per session, "
                 f"{s.get('weekly_hours', DEFAULT_WEEKLY_HOURS):g} quota hours a week; data loading assumed hidden "
                 "behind the GPU; quota: a session's wall time, whatever its GPU count")
    return "\n".join(lines)


def save_json(result: dict, path: str | Path) -> None:
    """Write an estimate (or a calibration) as JSON."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
