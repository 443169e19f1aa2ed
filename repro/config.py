"""One typed run configuration, from presets, YAML files and `key=value` overrides.

A run is described by a `RunConfig`: what to train (`model`), on what (`data`), how (`train`), with which
sparsity (`sparse`) and from which teacher (`distill`). Presets are YAML files shipped in `repro/presets/`;
a preset may start from another one with `base: NAME`. The resolved config is saved with every run.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ReproError


@dataclass
class ModelConfig:
    """The network to train.

    Args:
        name: a name from `repro.models.list_models()` (or any timm model name).
        num_classes: classifier size; None takes the dataset's class count.
        drop_path_rate: stochastic depth rate (0.1 SLaK-T, 0.4 SLaK-S, 0.5 SLaK-B in the papers).
        pretrained_file: local weight file to start from (never a download).
        kwargs: any other `repro.models.create_model` keyword (e.g. stem_stride, kernel_size).
    """

    name: str = "slak_micro"
    num_classes: int | None = None
    drop_path_rate: float = 0.1
    pretrained_file: str | None = None
    kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """The dataset and its transforms.

    Args:
        name: digits (embedded, no download), cifar10, cifar100, imagenet, or folder (class folders).
        root: folder to search for the data; None searches ./data, ~/data and, on Kaggle, /kaggle/input.
        img_size: training and evaluation resolution.
        val_fraction: share of the training set held out for model selection (0 evaluates on the test set).
        num_workers: DataLoader workers per process.
        randaugment: timm RandAugment string (e.g. "rand-m9-mstd0.5-inc1"); None disables.
        reprob: random erasing probability.
        hflip: horizontal flip probability.
        download: allow torchvision to download CIFAR when it is missing (needs internet).
        eval_batch_size: batch for evaluation; None uses the training batch size.
        robustness_root: ImageNet-A/-R/-Sketch style folder for robustness evaluation.
        train_limit: train on a fixed stratified subset of this many images (smoke tests); None uses all.
        augment_on: where training images are augmented: cpu (PIL, in DataLoader workers), device (batched
            on the training device; in-memory datasets at 32x32: cifar10, cifar100, digits), or auto (device
            on CUDA where it applies, else cpu). Same augmentation either way (repro.data.device_augment).
    """

    name: str = "digits"
    root: str | None = None
    img_size: int = 32
    val_fraction: float = 0.1
    num_workers: int = 2
    randaugment: str | None = None
    reprob: float = 0.0
    hflip: float = 0.5
    download: bool = False
    eval_batch_size: int | None = None
    robustness_root: str | None = None
    train_limit: int | None = None
    augment_on: str = "auto"


@dataclass
class TrainConfig:
    """The optimisation recipe (ConvNeXt/SLaK defaults).

    Args:
        epochs: passes over the training set.
        batch_size: images per step per process (before gradient accumulation).
        accum_steps: micro-batches accumulated into one optimizer step.
        lr: peak learning rate; None scales base_lr by effective batch / base_batch (linear rule).
        base_lr, base_batch: the linear-scaling reference (4e-3 at 4096 in the papers).
        min_lr: floor of the per-step cosine schedule.
        warmup_epochs: linear warmup length (may be fractional).
        weight_decay: AdamW decoupled weight decay.
        opt: adamw or sgd.
        momentum: SGD momentum.
        label_smoothing: used when mixup/cutmix are off (they carry their own smoothing).
        mixup, cutmix: Beta alphas (0 disables each); mixup_prob and mixup_switch_prob as in timm.
        clip_grad: max gradient norm; None disables.
        ema_decay: model EMA decay; 0 disables.
        precision: auto, fp32, fp16 or bf16 (auto: fp16 AMP on tensor-core GPUs, fp32 on Pascal and CPU).
        channels_last: NHWC memory format.
        eval_every: evaluate every this many epochs (and always at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP.
        fused_optimizer: update all parameters in PyTorch's fused AdamW/SGD kernel (CPU and CUDA): 2.5-4x
            faster than the per-tensor loop PyTorch runs on CPU by default (SLaK-T: 23-27 vs 65-103 ms per
            step), equally deterministic; results differ from the loop's in the last bits. False: PyTorch's
            default implementation.
        log_every: steps between host reads of the loss (one transfer per window, none in between), train
            records in metrics.jsonl / TensorBoard, progress lines off a terminal, and (under DDP) the ranks'
            agreement on stopping.
        tensorboard: write TensorBoard event files to <run>/tb/ (rank 0; needs the tensorboard package).
        compile: torch.compile nothing (off), the student with its loss (student), or also the frozen
            teacher (all); same loss as eager within 1e-5 relative, not bit-identical.
        deterministic: on CUDA, deterministic cuDNN/cuBLAS kernels (slower); off lets cuDNN pick the fastest
            (cudnn.benchmark). CPU runs are deterministic either way.
        teacher_cuda_graph: replay the frozen teacher's forward from a captured CUDA graph (CUDA, static
            shapes); outputs equal eager's up to kernel choice.
    """

    epochs: int = 300
    batch_size: int = 128
    accum_steps: int = 1
    lr: float | None = None
    base_lr: float = 4e-3
    base_batch: int = 4096
    min_lr: float = 1e-6
    warmup_epochs: float = 20.0
    weight_decay: float = 0.05
    opt: str = "adamw"
    momentum: float = 0.9
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    clip_grad: float | None = None
    ema_decay: float = 0.9999
    precision: str = "auto"
    channels_last: bool = False
    eval_every: int = 1
    keep_checkpoints: int = 3
    sync_bn: bool = False
    fused_optimizer: bool = True
    log_every: int = 50
    tensorboard: bool = True
    compile: str = "off"
    deterministic: bool = False
    teacher_cuda_graph: bool = False


@dataclass
class SparseConfig:
    """Dynamic sparse training of the weights (SLaK); sparsity 0 trains dense.

    Args:
        sparsity: fraction of zeros in the masked tensors (0.4 in SLaK).
        init: snip, erk or uniform.
        update_frequency: optimizer steps between prune-and-regrow updates.
        prune_rate: initial fraction of active weights pruned per update (cosine-decayed).
        growth: random or gradient.
        prune: magnitude.
        layers: all (every 2-D and 4-D weight), large_kernel, or a regular expression over parameter names.
        min_prune_rate: the floor of the cosine-decayed prune rate (0.005 in the released code).
        regrow_pruned: let random growth pick weights pruned in the same update (the released code does, and
            they keep their old values); off by default so an update really explores.
        dense_cutoff: layers whose allotted density reaches this stay dense (released: 0.99).
        reset_moments: zero the optimizer moments of pruned and regrown weights at each update (a regrown
            weight's first AdamW steps are then several times the normal size); the released code keeps
            them (false).
    """

    sparsity: float = 0.0
    init: str = "snip"
    update_frequency: int = 2000
    prune_rate: float = 0.5
    growth: str = "random"
    prune: str = "magnitude"
    layers: str = "all"
    min_prune_rate: float = 0.005
    regrow_pruned: bool = False
    dense_cutoff: float = 1.0
    reset_moments: bool = True


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher; method None trains the student alone.

    Args:
        method: kd, hard, nkd, dkd, fd, kd+fd or nkd+fd.
        teacher: a run folder of this package, or a checkpoint / weight file.
        teacher_model: the teacher's model name when the file does not record it.
        temperature, alpha, beta: loss hyper-parameters; None takes each method's released default.
        fd_weight: weight of the feature-distillation term.
        fd_loss: smoothl1 or mse.
        fd_projector: auto (a 1x1-conv projector only when student and teacher channels differ; equal maps
            are compared directly, as released) or always.
        teacher_deploy: run the teacher in its re-parameterized (deploy) form.
    """

    method: str | None = None
    teacher: str | None = None
    teacher_model: str | None = None
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    fd_weight: float = 1.0
    fd_loss: str = "smoothl1"
    fd_projector: str = "auto"
    teacher_deploy: bool = True


@dataclass
class RunConfig:
    """Everything that defines a run; saved as config.yaml in the run folder."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Build from a nested dict, checking every key and type."""
        cfg = cls()
        for key, value in _flatten(d):
            set_value(cfg, key, value)
        return cfg

    def to_yaml(self) -> str:
        """The config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(self.to_yaml())

    def validate(self) -> None:
        """Check every numeric setting against its allowed range; a ReproError lists each one outside it."""
        values = flat_dict(self)
        problems = [problem for rule in _RANGES if (problem := rule.check(values[rule.key], values))]
        if problems:
            raise ReproError("invalid config: " + "; ".join(problems))


@dataclass(frozen=True)
class _Range:
    """The allowed values of one numeric key: `ok(value, all_values)`, described as `allowed`."""

    key: str
    allowed: str
    ok: typing.Callable[[Any, dict], bool]
    suggest: str
    why: str = ""

    def check(self, value: Any, values: dict) -> str | None:
        if value is None and type(None) in typing.get_args(_HINTS[self.key]):
            return None
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if number and self.ok(value, values):
            return None
        why = f" ({self.why})" if self.why else ""
        return (f"{self.key} must be {self.allowed}{why}, found {value!r} "
                f"(set e.g. --set {self.key}={self.suggest})")


@dataclass(frozen=True)
class _Choice:
    """The allowed values of one text key."""

    key: str
    choices: tuple[str, ...]
    why: str = ""

    def check(self, value: Any, values: dict) -> str | None:
        if value in self.choices:
            return None
        why = f" ({self.why})" if self.why else ""
        return (f"{self.key} must be one of {', '.join(self.choices)}{why}, found {value!r} "
                f"(set e.g. --set {self.key}={self.choices[0]})")


def _open_unit(v: Any, _: dict) -> bool:
    return 0 <= v < 1


def _unit(v: Any, _: dict) -> bool:
    return 0 <= v <= 1


def _positive(v: Any, _: dict) -> bool:
    return v > 0


def _non_negative(v: Any, _: dict) -> bool:
    return v >= 0


def _at_least_one(v: Any, _: dict) -> bool:
    return v >= 1


# Ranges outside which training would crash deep inside or silently do something else than asked.
_RANGES = (
    _Range("model.drop_path_rate", "in [0, 1)", _open_unit, "0.1", "stochastic depth rate"),
    _Range("data.num_workers", "0 or more", _non_negative, "2", "DataLoader workers; 0 loads in the main process"),
    _Range("data.eval_batch_size", "1 or more, or null", _at_least_one, "null",
           "null uses train.batch_size"),
    _Range("data.train_limit", "1 or more, or null", _at_least_one, "null", "null trains on every image"),
    _Choice("data.augment_on", ("auto", "cpu", "device"), "auto: on the GPU for in-memory datasets, else cpu"),
    _Range("train.epochs", "1 or more", _at_least_one, "300"),
    _Range("train.batch_size", "1 or more", _at_least_one, "128"),
    _Range("train.accum_steps", "1 or more", _at_least_one, "1"),
    _Range("train.lr", "above 0, or null", _positive, "4e-3", "null scales train.base_lr by the batch"),
    _Range("train.base_lr", "above 0", _positive, "4e-3"),
    _Range("train.base_batch", "1 or more", _at_least_one, "4096"),
    _Range("train.min_lr", "0 or more", _non_negative, "1e-6"),
    _Range("train.warmup_epochs", "0 or more", _non_negative, "20"),
    _Range("train.weight_decay", "0 or more", _non_negative, "0.05"),
    _Range("train.momentum", "in [0, 1)", _open_unit, "0.9"),
    _Range("train.label_smoothing", "in [0, 1)", _open_unit, "0.1"),
    _Range("train.mixup", "0 or more", _non_negative, "0.8", "Beta alpha; 0 disables mixup"),
    _Range("train.cutmix", "0 or more", _non_negative, "1.0", "Beta alpha; 0 disables cutmix"),
    _Range("train.mixup_prob", "in [0, 1]", _unit, "1.0", "a probability"),
    _Range("train.mixup_switch_prob", "in [0, 1]", _unit, "0.5", "a probability"),
    _Range("train.clip_grad", "above 0, or null", _positive, "null", "null disables clipping"),
    _Range("train.ema_decay", "in [0, 1)", _open_unit, "0.9999", "0 disables the EMA"),
    _Range("train.eval_every", "1 or more", _at_least_one, "1", "evaluate every this many epochs"),
    _Range("train.log_every", "1 or more", _at_least_one, "50", "steps between host reads of the loss"),
    _Range("train.keep_checkpoints", "1 or more", _at_least_one, "3",
           "resuming needs at least one checkpoint on disk"),
    _Range("sparse.sparsity", "in [0, 1)", _open_unit, "0.4", "fraction of zeros; 0 trains dense"),
    _Range("sparse.update_frequency", "1 or more", _at_least_one, "2000",
           "optimizer steps between prune-and-regrow updates"),
    _Range("sparse.prune_rate", "in (0, 1]", lambda v, _: 0 < v <= 1, "0.5"),
    _Range("sparse.min_prune_rate", "in [0, sparse.prune_rate]", lambda v, c: 0 <= v <= c["sparse.prune_rate"],
           "0.005"),
    _Range("sparse.dense_cutoff", "in (0, 1]", lambda v, _: 0 < v <= 1, "1.0"),
    _Range("distill.temperature", "above 0, or null", _positive, "null", "null takes the method's default"),
    _Range("distill.alpha", "0 or more, or null", _non_negative, "null", "null takes the method's default"),
    _Range("distill.beta", "0 or more, or null", _non_negative, "null", "null takes the method's default"),
    _Range("distill.fd_weight", "0 or more", _non_negative, "1.0"),
)


# Sections whose values identify what is trained; differences here make a resume unsafe.
RESUME_SENSITIVE = ("seed", "model", "data", "train", "sparse", "distill")
# Keys that may change between sessions of one run without changing its results.
# What runs did before a key existed, where that differs from the key's default today: (value, whether the key
# mattered to that run). A key that did not matter takes today's value, so it never blocks a resume.
LEGACY_DEFAULTS = {
    "sparse.reset_moments": (True, lambda c: (c.get("sparse.sparsity") or 0) > 0),
    "distill.fd_projector": ("always", lambda c: "fd" in str(c.get("distill.method") or "").split("+")),
}

RESUME_SAFE_KEYS = {"name", "data.root", "data.num_workers", "data.eval_batch_size", "data.download",
                    "data.robustness_root", "train.keep_checkpoints", "distill.teacher",
                    "train.log_every", "train.tensorboard", "train.compile", "train.deterministic",
                    "train.teacher_cuda_graph", "data.augment_on"}


def _flatten(d: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not key.endswith("kwargs"):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def flat_dict(cfg: RunConfig) -> dict[str, Any]:
    """`{'train.lr': ..., ...}` view of a config."""
    return dict(_flatten(cfg.to_dict()))


def all_keys() -> list[str]:
    """Every settable dotted key."""
    return list(flat_dict(RunConfig()))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or explain the mismatch."""
    hint = annotation if not isinstance(annotation, str) else _HINTS[key]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    allowed = [a for a in args if a is not type(None)] if origin in (typing.Union, _UnionType) else [hint]
    if value is None:
        if type(None) in args:
            return None
        raise ReproError(f"config key '{key}' cannot be empty: expected {_type_name(hint)}; "
                         f"set a value, e.g. --set {key}=...")
    for typ in allowed:
        base = typing.get_origin(typ) or typ
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if base in (str, bool, dict, list) and isinstance(value, base):
            return value
        if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if base in (int, float) and isinstance(value, str):
            try:  # YAML 1.1 reads "2e-3" (no dot) as a string
                number = float(value)
            except ValueError:
                continue
            if base is float or number.is_integer():
                return base(number)
    raise ReproError(f"config key '{key}' expects {_type_name(hint)}, found {value!r} "
                     f"({type(value).__name__}); fix the preset/config file or the --set value")


try:  # Python 3.10+: X | Y annotations
    from types import UnionType as _UnionType
except ImportError:  # pragma: no cover
    _UnionType = typing.Union


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _section_hints() -> dict[str, Any]:
    hints = {}
    top = typing.get_type_hints(RunConfig)
    for name, typ in top.items():
        if dataclasses.is_dataclass(typ):
            for sub, subtyp in typing.get_type_hints(typ).items():
                hints[f"{name}.{sub}"] = subtyp
        else:
            hints[name] = typ
    return hints


_HINTS = _section_hints()


def set_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Set a dotted key (e.g. `train.lr`) with type checking; unknown keys name close matches."""
    if key.startswith("model.kwargs.") or key == "model.kwargs":
        if key == "model.kwargs":
            if not isinstance(value, dict):
                raise ReproError(f"config key 'model.kwargs' expects a mapping, found {value!r}")
            cfg.model.kwargs = dict(value)
        else:
            cfg.model.kwargs[key[len("model.kwargs."):]] = value
        return
    if key not in _HINTS:
        if any(k.startswith(key + ".") for k in _HINTS):
            raise ReproError(f"config section '{key}' expects a mapping of its keys (e.g. {key}: {{...}} in YAML, "
                             f"or --set {key}.KEY=VALUE), found {value!r}")
        close = difflib.get_close_matches(key, list(_HINTS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `repro presets --keys` for the list"
        raise ReproError(f"unknown config key '{key}'{hint}")
    value = _coerce(value, _HINTS[key], key)
    obj: Any = cfg
    *parents, last = key.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key=value`, parsing the value as YAML (so 0.1 is a float, true a bool, null None)."""
    if "=" not in text:
        raise ReproError(f"--set expects key=value (e.g. train.epochs=10), found '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


PRESET_PACKAGE = "repro.presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (shared bases, named `_...`, are left out)."""
    files = resources.files(PRESET_PACKAGE).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml") and not p.name.startswith("_"))


def preset_purpose(name: str) -> str:
    """A preset's purpose: the first sentence of the comment that opens its YAML file, up to an indented
    example line or an empty comment line ('' when the file opens without a comment)."""
    path = resources.files(PRESET_PACKAGE) / f"{name}.yaml"
    lines = path.read_text().splitlines() if path.is_file() else []
    prose = itertools.takewhile(lambda t: t.startswith("#") and t[1:].strip() and not t[1:].startswith("  "),
                                lines)
    text = re.split(r"(?<=\.)\s+(?=[A-Z])", " ".join(line[1:].strip() for line in prose), maxsplit=1)[0]
    return re.sub(r"[,;:]?\s*(e\.g\.)?$", "", text)  # a sentence leading into an example stops before it


# Meanings that no section docstring gives: the top-level keys, and entries a docstring mentions in passing.
_KEY_MEANINGS = {
    "name": "the run's name, recorded in summary.json (a preset names its runs after itself)",
    "seed": "seed of the initial weights, data order, augmentation and dropout",
    "train.mixup_prob": "probability that a batch gets mixup or cutmix (timm's Mixup prob)",
    "train.mixup_switch_prob": "probability of cutmix instead of mixup when both are on (timm's switch_prob)",
}


def _docstring_meanings(section: type) -> dict[str, str]:
    """{field: meaning} from the `Args:` block of a config section's docstring (`a, b: text` gives both)."""
    meanings: dict[str, str] = {}
    names: list[str] = []
    lines = inspect.cleandoc(section.__doc__ or "").splitlines()
    for line in lines[lines.index("Args:") + 1:] if "Args:" in lines else []:
        entry = re.match(r"^    (\w[\w, ]*):\s+(.*)$", line)
        if entry and all(n.strip().isidentifier() for n in entry.group(1).split(",")):
            names = [n.strip() for n in entry.group(1).split(",")]
            meanings.update({n: entry.group(2).strip() for n in names})
        elif line.startswith("        ") and names:  # a continuation line
            meanings.update({n: meanings[n] + " " + line.strip() for n in names})
    return meanings


def _yaml_value(value: Any) -> str:
    """A value as it is written in YAML and --set (null, true, 0.0001)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def key_table() -> list[dict[str, str]]:
    """One row per config key: key, type, default (as written in YAML) and meaning (from the docstrings)."""
    meanings = dict(_KEY_MEANINGS)
    for name, section in typing.get_type_hints(RunConfig).items():
        if dataclasses.is_dataclass(section):
            meanings.update({f"{name}.{k}": v for k, v in _docstring_meanings(section).items()})
    defaults = flat_dict(RunConfig())
    return [{"key": key, "type": _type_name(_HINTS[key]), "default": _yaml_value(value),
             "meaning": meanings.get(key, "")} for key, value in defaults.items()]


def _read_yaml(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReproError(f"{where} is not valid YAML ({exc}); fix the file") from None
    if not isinstance(data, dict):
        raise ReproError(f"{where} should hold a mapping of config sections, found {type(data).__name__}")
    return data


def _preset_dict(name: str, seen: tuple[str, ...] = ()) -> dict:
    if name in seen:
        raise ReproError(f"preset '{name}' includes itself through 'base' ({' -> '.join(seen + (name,))})")
    path = resources.files(PRESET_PACKAGE) / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ReproError(f"unknown preset '{name}'.{hint} Available: {', '.join(list_presets())}")
    data = _read_yaml(path.read_text(), f"preset '{name}'")
    return _with_base(data, seen + (name,))


def _with_base(data: dict, seen: tuple[str, ...]) -> dict:
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _preset_dict(base, seen)
    for key, value in _flatten(data):
        _nested_set(merged, key, value)
    return merged


def _nested_set(d: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: Iterable[str] = ()) -> RunConfig:
    """Resolve a preset or YAML file, apply `key=value` overrides in order, and check the value ranges."""
    if preset and config_file:
        raise ReproError("give either a preset or a config file, not both")
    if preset:
        data = _preset_dict(preset)
        data.setdefault("name", preset)
    elif config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ReproError(f"config file not found: {path}; pass an existing YAML file or use --preset")
        data = _with_base(_read_yaml(path.read_text(), str(path)), ())
    else:
        data = {}
    cfg = RunConfig.from_dict(data)
    for text in overrides:
        set_value(cfg, *parse_override(text))
    cfg.validate()
    return cfg


def config_differences(old: RunConfig | dict, new: RunConfig | dict) -> list[str]:
    """Keys whose values differ in ways that change a run's results (ignores RESUME_SAFE_KEYS)."""
    a = flat_dict(old) if isinstance(old, RunConfig) else dict(_flatten(old))
    b = flat_dict(new) if isinstance(new, RunConfig) else dict(_flatten(new))
    if not isinstance(old, RunConfig):  # a config.yaml written before a key existed ran its earlier behaviour
        defaults = flat_dict(RunConfig())
        for key in b:
            if key not in a and key in defaults and not key.startswith("model.kwargs."):
                legacy, mattered = LEGACY_DEFAULTS.get(key, (None, None))
                a[key] = legacy if mattered is not None and mattered(a) else b[key]
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_SAFE_KEYS:
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs
