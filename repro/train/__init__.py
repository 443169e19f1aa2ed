"""The training engine: one loop for teachers, students and distillation, with exact time-budgeted resume."""
from .budget import StopSignal, TimeBudget, parse_duration
from .checkpoint import list_checkpoints, load_checkpoint, state_digest
from .engine import Trainer, train
from .evaluate import evaluate_model
from .evaluation import evaluate, evaluate_robustness

__all__ = ["train", "Trainer", "evaluate", "evaluate_robustness", "evaluate_model", "TimeBudget", "StopSignal",
           "parse_duration", "state_digest", "list_checkpoints", "load_checkpoint"]
