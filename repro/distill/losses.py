"""Distillation losses: KD, NKD, DKD (logit level), FD (feature level) and their combinations.

Each logit loss is called `loss(student_logits, teacher_logits, target)` and returns a scalar tensor; its
`components(...)` method returns the weighted terms whose sum is that scalar, so a training loop can log them.
The target is either class indices (B,) or a soft target (B, C) such as a mixup/cutmix or label-smoothed one.

The formulas follow the released code of the papers (see PAPERS.md, "Distillation losses (code)"):
- KD and its "hard" variant as in the large-kernel-teacher KD code (Huang et al., ICML 2023);
- NKD as released with that code (Yang et al. 2022, "Rethinking Knowledge Distillation via Cross-Entropy");
- DKD as in mdistiller (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation");
- FD: SmoothL1 (beta 2) between the student's last feature map, through a 1x1-conv projector when its channels
  differ from the teacher's (compared directly when they are equal, as released), and the teacher's.

All logit losses compute in float32 (autocast would run softmax/log in float32 anyway), so the value does
not depend on the precision the logits were produced in.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ReproError

__all__ = [
    "KDLoss", "NKDLoss", "DKDLoss", "FDLoss", "DistillCriterion", "build_distill_loss", "METHODS",
    "DEFAULTS", "FD_PROJECTORS", "cross_entropy", "hard_labels",
]

# The methods a DistillCriterion combines; "fd" alone is cross-entropy plus feature distillation.
METHODS = ("kd", "hard", "nkd", "dkd", "fd", "kd+fd", "nkd+fd")

# Released defaults per loss: KD scripts use T=3, alpha=0.1; the released NKD runs with tau=1, alpha=1;
# mdistiller's DKD on CIFAR uses alpha=1, beta=8, T=4; FD uses SmoothL1(beta=2) with weight 1.
DEFAULTS = {
    "kd": {"temperature": 3.0, "alpha": 0.1},
    "hard": {},
    "nkd": {"temperature": 1.0, "alpha": 1.0},
    "dkd": {"temperature": 4.0, "alpha": 1.0, "beta": 8.0},
    "fd": {"weight": 1.0, "loss": "smoothl1", "beta": 2.0, "projector": "auto"},
}

# When FD puts a 1x1-conv projector on the student's map: 'auto' only if the channel counts differ (the
# released code compares equal maps, e.g. a ConvNeXt-T teacher's and student's, directly), 'always' also then.
FD_PROJECTORS = ("auto", "always")


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ReproError(
            f"distillation needs student and teacher logits of the same shape (batch, classes); found student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}. Use a teacher trained "
            f"on the same classes as the student's data.")


def _check_target(target: torch.Tensor, logits: torch.Tensor) -> None:
    batch, classes = logits.shape
    if target.dim() == 1 and not target.is_floating_point():
        if target.shape[0] != batch:
            raise ReproError(f"expected {batch} class indices in the target, found {target.shape[0]}.")
        return
    if target.dim() == 2 and target.is_floating_point() and tuple(target.shape) == (batch, classes):
        return
    raise ReproError(
        f"expected the target as class indices of shape ({batch},) or a soft target of shape "
        f"({batch}, {classes}); found {target.dtype} of shape {tuple(target.shape)}.")


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices (B,) from indices or a soft target (argmax, first maximum on ties)."""
    if target.dim() > 1:
        return target.argmax(dim=1)
    return target.reshape(-1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against class indices or a soft target (-sum target * log_softmax)."""
    # F.cross_entropy treats a float (B, C) target as class probabilities: exactly soft-target CE.
    return F.cross_entropy(logits.float(), target.float() if target.is_floating_point() else target,
                           label_smoothing=label_smoothing)


class KDLoss(nn.Module):
    """Hinton KD as released: alpha * T^2 * KL(p_t || p_s) (batchmean) + (1 - alpha) * CE(s, target).

    With `hard=True` it is the released "hard" variant 0.5 * CE(s, target) + 0.5 * CE(s, argmax t), and
    temperature and alpha are unused. The CE term takes the target as given (soft targets give soft-target
    cross-entropy), as the released `loss_kd` passes mixup targets straight to `F.cross_entropy`.

    Args:
        temperature: softening temperature T of both distributions (the released scripts use 3).
        alpha: weight of the KL term; the CE term gets 1 - alpha.
        hard: use the hard-label variant.
    """

    def __init__(self, temperature: float = 3.0, alpha: float = 0.1, hard: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ReproError(f"KD temperature must be positive, found {temperature}.")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hard = bool(hard)

    def components(self, student_logits, teacher_logits, target) -> dict[str, torch.Tensor]:
        """The weighted terms ('kd', 'ce') whose sum is the loss."""
        _check_logits(student_logits, teacher_logits)
        _check_target(target, student_logits)
        s, t = student_logits.float(), teacher_logits.detach().float()
        if self.hard:
            return {"kd": 0.5 * F.cross_entropy(s, t.argmax(dim=1)), "ce": 0.5 * cross_entropy(s, target)}
        T = self.temperature
        kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
        return {"kd": kl * T * T * self.alpha, "ce": cross_entropy(s, target) * (1.0 - self.alpha)}

    def forward(self, student_logits, teacher_logits, target) -> torch.Tensor:
        """Scalar KD loss."""
        return sum(self.components(student_logits, teacher_logits, target).values())

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, hard={self.hard}"


class NKDLoss(nn.Module):
    """Normalized KD exactly as released with the large-kernel-teacher code (no separate CE term).

    With label = argmax of the (soft) target, y = softmax(s), w_t = softmax(t)[label] (detached):
      target term      = -mean(w_t * log y_label)
      non-target term  = -alpha * tau^2 * mean_i sum_j np_t[i,j] * log np_s[i,j]
    where the target logit is pushed out by subtracting 1000 * onehot from both logit vectors,
    T_i = softmax(t_masked / tau), S_i = softmax(s_masked / tau), and each is renormalised by one minus
    its own (masked) target probability: np_t = T_i / (1 - T_t), np_s = S_i / (1 - S_t).
    Details reproduced from the released code, on purpose:
    - the renormalisation uses the target probability of the *masked* softmax; in float32 that probability
      underflows to exactly 0 for tau below about 9.7 (logits of ordinary size), making the renormalisation
      an identity, while at large tau it is what turns the masked softmax into the distribution over the
      non-target classes;
    - every entry where the teacher's masked probability equals its target probability (the target
      class, plus any class whose probability also underflowed to 0) gets np_t = 0 and np_s = 1, i.e. it
      drops out of the sum with no gradient; the student's own probabilities are not consulted for this;
    - logarithms are `log(softmax(.))`, not `log_softmax`, with no epsilon and no clamp: a student
      probability that underflows to 0 where the teacher's does not gives an infinite loss, as released.
    The released training script builds it with tau = 1 and alpha = 1 and ignores its --T flag.

    Args:
        temperature: tau, the temperature of the non-target distributions.
        alpha: weight of the non-target term.
    """

    def __init__(self, temperature: float = 1.0, alpha: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ReproError(f"NKD temperature must be positive, found {temperature}.")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def components(self, student_logits, teacher_logits, target) -> dict[str, torch.Tensor]:
        """The terms ('nkd_target', 'nkd_nontarget') whose sum is the loss."""
        _check_logits(student_logits, teacher_logits)
        _check_target(target, student_logits)
        s, t = student_logits.float(), teacher_logits.detach().float()
        label = hard_labels(target).view(-1, 1)
        tau = self.temperature

        y_t = torch.gather(F.softmax(s, dim=1), 1, label)
        w_t = torch.gather(F.softmax(t, dim=1), 1, label).detach()

        onehot = torch.zeros_like(s).scatter_(1, label, 1.0).bool()
        t_probs = F.softmax((t - 1000 * onehot) / tau, dim=1)
        s_probs = F.softmax((s - 1000 * onehot) / tau, dim=1)
        np_t = t_probs / (1 - torch.gather(t_probs, 1, label))
        np_s = s_probs / (1 - torch.gather(s_probs, 1, label))
        dropped = t_probs == torch.gather(t_probs, 1, label)
        np_t = np_t.masked_fill(dropped, 0.0)
        np_s = np_s.masked_fill(dropped, 1.0)

        target_term = -(w_t * torch.log(y_t)).mean()
        nontarget = (np_t * torch.log(np_s)).sum(dim=1).mean()
        return {"nkd_target": target_term, "nkd_nontarget": -self.alpha * (tau ** 2) * nontarget}

    def forward(self, student_logits, teacher_logits, target) -> torch.Tensor:
        """Scalar NKD loss."""
        return sum(self.components(student_logits, teacher_logits, target).values())

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


class DKDLoss(nn.Module):
    """Decoupled KD as in mdistiller: ce_weight * CE + warmup * (alpha * TCKD + beta * NCKD).

    TCKD is KL(b_t || b_s) between the binary (target, non-target) distributions of softmax(logits / T);
    NCKD is KL(q_t || q_s) between softmax(logits / T - 1000 * onehot), i.e. the distributions over the
    non-target classes. Both are summed over the batch, multiplied by T^2 and divided by the batch size;
    log b_s is `log` of the summed probabilities (no epsilon), as in mdistiller. A soft target gives its
    argmax as the label for the masks and soft-target cross-entropy for the CE term.

    mdistiller ramps the DKD term in over its first 20 epochs by min(epoch / 20, 1) with 1-based epochs;
    here the ramp counts optimizer steps: min((step + 1) / warmup_steps, 1) with 0-based `step`, and
    warmup_steps = 0 disables it.

    Args:
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: softening temperature T.
        warmup_steps: steps of the linear ramp of the DKD term (0: no ramp).
        ce_weight: weight of the student's cross-entropy (1 in mdistiller).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup_steps: int = 0,
                 ce_weight: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ReproError(f"DKD temperature must be positive, found {temperature}.")
        if warmup_steps < 0:
            raise ReproError(f"DKD warmup_steps must be >= 0, found {warmup_steps}.")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.warmup_steps = int(warmup_steps)
        self.ce_weight = float(ce_weight)

    def ramp(self, step: int | None) -> float:
        """Factor of the DKD term at 0-based optimizer step `step`."""
        if self.warmup_steps == 0:
            return 1.0
        if step is None:
            raise ReproError(
                f"DKD with warmup_steps={self.warmup_steps} needs the current optimizer step: call the loss "
                f"with step=... (0-based), or set warmup_steps=0.")
        return min((int(step) + 1) / self.warmup_steps, 1.0)

    def components(self, student_logits, teacher_logits, target, step: int | None = None):
        """The weighted terms ('ce', 'tckd', 'nckd') whose sum is the loss."""
        _check_logits(student_logits, teacher_logits)
        _check_target(target, student_logits)
        s, t = student_logits.float(), teacher_logits.detach().float()
        label = hard_labels(target).view(-1, 1)
        batch = s.shape[0]
        T = self.temperature
        gt = torch.zeros_like(s).scatter_(1, label, 1.0).bool()

        def binary(probs):
            return torch.cat([(probs * gt).sum(1, keepdim=True), (probs * ~gt).sum(1, keepdim=True)], dim=1)

        b_s = binary(F.softmax(s / T, dim=1))
        b_t = binary(F.softmax(t / T, dim=1))
        tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * (T ** 2) / batch
        q_t = F.softmax(t / T - 1000.0 * gt, dim=1)
        log_q_s = F.log_softmax(s / T - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_q_s, q_t, reduction="sum") * (T ** 2) / batch
        ramp = self.ramp(step)
        return {"ce": self.ce_weight * cross_entropy(s, target),
                "tckd": ramp * self.alpha * tckd, "nckd": ramp * self.beta * nckd}

    def forward(self, student_logits, teacher_logits, target, step: int | None = None) -> torch.Tensor:
        """Scalar DKD loss (CE included)."""
        return sum(self.components(student_logits, teacher_logits, target, step=step).values())

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
                f"warmup_steps={self.warmup_steps}, ce_weight={self.ce_weight}")


class FDLoss(nn.Module):
    """Feature distillation: weight * loss(projector(student_map), teacher_map.detach()).

    The projector is a 1x1 convolution from the student's to the teacher's channel count, trained with the
    student (its parameters belong in the optimizer and the checkpoint); it is initialised like the
    ConvNeXt convolutions (truncated normal, std 0.02, zero bias). With `projector='auto'` it exists only
    when the channel counts differ: equal maps are compared directly, as the released code does with a
    ConvNeXt-T teacher, and the loss then has no parameters. When the spatial sizes differ (e.g. a ViT
    teacher's 14x14 token grid against a ConvNeXt student's 7x7 map), the (projected) student map is
    resized to the teacher's size by bilinear interpolation with align_corners=False. The loss is computed
    in float32 with mean reduction.

    Args:
        student_channels: channels of the student's last-stage feature map.
        teacher_channels: channels of the teacher's last-stage feature map.
        loss: 'smoothl1' (released default) or 'mse'.
        weight: multiplier of the loss (the released --lr_fd, default 1).
        beta: SmoothL1 transition point (2.0 as released); unused for 'mse'.
        projector: 'auto' (a projector only for differing channel counts, as released) or 'always'.
    """

    def __init__(self, student_channels: int, teacher_channels: int, loss: str = "smoothl1", weight: float = 1.0,
                 beta: float = 2.0, projector: str = "auto"):
        super().__init__()
        if loss not in ("smoothl1", "mse"):
            raise ReproError(f"FD loss must be 'smoothl1' or 'mse', found {loss!r}.")
        if projector not in FD_PROJECTORS:
            raise ReproError(f"FD projector must be one of {', '.join(FD_PROJECTORS)}, found {projector!r}; "
                             f"set distill.fd_projector=auto (the released behaviour) or always.")
        if int(student_channels) <= 0 or int(teacher_channels) <= 0:
            raise ReproError(f"FD needs positive channel counts, found student {student_channels}, "
                             f"teacher {teacher_channels}.")
        self.student_channels = int(student_channels)
        self.teacher_channels = int(teacher_channels)
        self.loss = loss
        self.weight = float(weight)
        self.beta = float(beta)
        self.projector_mode = projector
        self.projector: nn.Conv2d | None = None
        if projector == "always" or self.student_channels != self.teacher_channels:
            self.projector = nn.Conv2d(self.student_channels, self.teacher_channels, kernel_size=1)
            nn.init.trunc_normal_(self.projector.weight, std=0.02)
            nn.init.zeros_(self.projector.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint with a projector cannot resume a loss without one (or the reverse): say which setting fits.
        saved = any(k.startswith(prefix + "projector.") for k in state_dict)
        if saved and self.projector is None:
            raise ReproError(
                f"the checkpoint's FD loss has a projector ({self.student_channels} -> {self.teacher_channels} "
                f"channels), this one has none (fd_projector={self.projector_mode!r} with equal channels); "
                f"resume it with --set distill.fd_projector=always.")
        if not saved and self.projector is not None and strict:
            raise ReproError(
                f"the checkpoint's FD loss has no projector, this one has a {self.student_channels} -> "
                f"{self.teacher_channels} projector (fd_projector={self.projector_mode!r}); resume it with "
                f"--set distill.fd_projector=auto, with the teacher and student it was trained with.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def project(self, student_map: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Student map in the teacher's channels (and, given `size`, at that spatial size)."""
        if student_map.dim() != 4 or student_map.shape[1] != self.student_channels:
            raise ReproError(
                f"FD expected a student feature map with {self.student_channels} channels (B, C, H, W); found "
                f"shape {tuple(student_map.shape)}. Build the FD loss with the student's feature_channels().")
        out = self.projector(student_map) if self.projector is not None else student_map
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        """Scalar FD loss."""
        if teacher_map.dim() != 4 or teacher_map.shape[1] != self.teacher_channels:
            raise ReproError(
                f"FD expected a teacher feature map with {self.teacher_channels} channels (B, C, H, W); found "
                f"shape {tuple(teacher_map.shape)}. Build the FD loss with the teacher's feature_channels().")
        if student_map.shape[0] != teacher_map.shape[0]:
            raise ReproError(f"FD got {student_map.shape[0]} student maps but {teacher_map.shape[0]} teacher maps.")
        pred = self.project(student_map, teacher_map.shape[-2:]).float()
        target = teacher_map.detach().float()
        if self.loss == "smoothl1":
            loss = F.smooth_l1_loss(pred, target, beta=self.beta)
        else:
            loss = F.mse_loss(pred, target)
        return self.weight * loss

    def extra_repr(self) -> str:
        return (f"loss={self.loss!r}, weight={self.weight}, beta={self.beta}, "
                f"projector={self.projector_mode!r}")


class DistillCriterion(nn.Module):
    """The training loss of one distillation method; returns (total, parts) for logging.

    Methods: 'kd', 'hard', 'nkd', 'dkd' (logit losses, each with its own CE handling as released),
    'fd' (CE + FD, the released FD-only path uses the run's own criterion), 'kd+fd', 'nkd+fd'.
    The only parameters it holds are those of the FD projector, if any: add `criterion.parameters()` to the
    optimizer and save `criterion.state_dict()` with the student. The teacher is never held here.

    Args:
        method: one of METHODS.
        logit_loss: the KD/NKD/DKD module (None for 'fd').
        fd: the FDLoss module (None for logit-only methods).
        label_smoothing: smoothing of the CE term of 'fd' on class-index targets (soft targets carry
            their own); the logit losses use plain CE as released.
    """

    def __init__(self, method: str, logit_loss: nn.Module | None = None, fd: FDLoss | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        method = _check_method(method)
        if ("fd" in method.split("+")) != (fd is not None):
            raise ReproError(f"method {method!r} {'needs' if fd is None else 'takes no'} FDLoss.")
        if (method != "fd") != (logit_loss is not None):
            raise ReproError(f"method {method!r} {'needs' if logit_loss is None else 'takes no'} logit loss.")
        self.method = method
        self.logit_loss = logit_loss
        self.fd = fd
        self.label_smoothing = float(label_smoothing)

    @property
    def uses_features(self) -> bool:
        """Whether the feature maps of student and teacher are needed."""
        return self.fd is not None

    def forward(self, student_logits: torch.Tensor, student_map: torch.Tensor | None,
                teacher_logits: torch.Tensor, teacher_map: torch.Tensor | None, target: torch.Tensor,
                step: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, {part name: detached weighted part}); `step` (0-based) feeds DKD's warmup."""
        parts: dict[str, torch.Tensor] = {}
        if self.logit_loss is None:
            _check_target(target, student_logits)
            parts["ce"] = cross_entropy(student_logits, target, label_smoothing=self.label_smoothing)
        elif isinstance(self.logit_loss, DKDLoss):
            parts.update(self.logit_loss.components(student_logits, teacher_logits, target, step=step))
        else:
            parts.update(self.logit_loss.components(student_logits, teacher_logits, target))
        if self.fd is not None:
            if student_map is None or teacher_map is None:
                raise ReproError(f"method {self.method!r} needs the student's and the teacher's feature maps; "
                                 f"found {'no student map' if student_map is None else 'no teacher map'}.")
            parts["fd"] = self.fd(student_map, teacher_map)
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


def _check_method(method: str) -> str:
    name = str(method).lower().replace(" ", "") if method is not None else ""
    if name not in METHODS:
        raise ReproError(f"unknown distillation method {method!r}; choose one of {', '.join(METHODS)}.")
    return name


def build_distill_loss(method: str, *, temperature: float | None = None, alpha: float | None = None,
                       beta: float | None = None, student_channels: int | None = None,
                       teacher_channels: int | None = None, fd_weight: float | None = None,
                       fd_loss: str | None = None, fd_beta: float | None = None, fd_projector: str | None = None,
                       ce_weight: float | None = None, warmup_steps: int | None = None,
                       label_smoothing: float = 0.0) -> DistillCriterion:
    """A DistillCriterion for `method`; hyper-parameters left None take that method's released default.

    A hyper-parameter the method does not use raises ReproError rather than being ignored.
    """
    method = _check_method(method)
    parts = method.split("+")
    logit = parts[0] if parts[0] != "fd" else None
    uses = {"kd": {"temperature", "alpha"}, "hard": set(), "nkd": {"temperature", "alpha"},
            "dkd": {"temperature", "alpha", "beta", "ce_weight", "warmup_steps"}, None: set()}[logit]
    if "fd" in parts:
        uses = uses | {"student_channels", "teacher_channels", "fd_weight", "fd_loss", "fd_beta", "fd_projector"}
    given = {"temperature": temperature, "alpha": alpha, "beta": beta, "student_channels": student_channels,
             "teacher_channels": teacher_channels, "fd_weight": fd_weight, "fd_loss": fd_loss, "fd_beta": fd_beta,
             "fd_projector": fd_projector, "ce_weight": ce_weight, "warmup_steps": warmup_steps}
    unused = sorted(k for k, v in given.items() if v is not None and k not in uses)
    if label_smoothing and method != "fd":
        unused.append("label_smoothing")  # the logit losses use plain CE on the given target, as released
    if unused:
        raise ReproError(f"distillation method {method!r} does not use {', '.join(unused)}; it takes "
                         f"{', '.join(sorted(uses)) or 'no hyper-parameters'}. Remove the others.")

    def pick(value, default):
        return default if value is None else value

    logit_loss: nn.Module | None = None
    if logit in ("kd", "hard"):
        d = DEFAULTS["kd"]
        logit_loss = KDLoss(pick(temperature, d["temperature"]), pick(alpha, d["alpha"]), hard=logit == "hard")
    elif logit == "nkd":
        d = DEFAULTS["nkd"]
        logit_loss = NKDLoss(pick(temperature, d["temperature"]), pick(alpha, d["alpha"]))
    elif logit == "dkd":
        d = DEFAULTS["dkd"]
        logit_loss = DKDLoss(pick(alpha, d["alpha"]), pick(beta, d["beta"]), pick(temperature, d["temperature"]),
                             warmup_steps=pick(warmup_steps, 0), ce_weight=pick(ce_weight, 1.0))
    fd = None
    if "fd" in parts:
        if student_channels is None or teacher_channels is None:
            raise ReproError(f"method {method!r} needs student_channels and teacher_channels for the FD "
                             f"projector (repro.models.feature_channels of each model).")
        d = DEFAULTS["fd"]
        fd = FDLoss(student_channels, teacher_channels, loss=pick(fd_loss, d["loss"]),
                    weight=pick(fd_weight, d["weight"]), beta=pick(fd_beta, d["beta"]),
                    projector=pick(fd_projector, d["projector"]))
    return DistillCriterion(method, logit_loss=logit_loss, fd=fd, label_smoothing=label_smoothing)
