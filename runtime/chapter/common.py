"""What every exercise command shares: the chapter's model, a seeded minibatch, and the exercise being asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from partition.cost import Optimizer, as_optimizer
from partition.spec import Loss, MLPSpec
from runtime.ops.model import PipeModel
from runtime.train.config import parse_dtype

# The chapter's own model: x in R^4, one hidden layer of 5, 3 outputs, no bias, l2 on.
CHAPTER_SPEC = MLPSpec((4, 5, 3), bias=False, l2=0.01)


class Exercise(Enum):
    """The chapter's exercises, by number."""

    SHAPES = "ex1"  # matrix inputs: the dimensionality of every gradient
    BIAS = "ex2"  # a bias on the hidden layer: the graph and the equations
    MEMORY = "ex3"  # memory for training vs inference
    SECOND_ORDER = "ex4"  # second derivatives
    PARTITION = "ex5"  # partition over devices, or a smaller minibatch?


class Setting(Enum):
    """How long exercise 5's experiment runs: the compare harness's quick settings, or a tiny one for tests."""

    QUICK = "quick"
    TINY = "tiny"


@dataclass(frozen=True)
class ChapterConfig:
    """One exercise command: the model, the minibatch size n, the dtype, and the exercise's own options."""

    exercise: Exercise = Exercise.SHAPES
    spec: MLPSpec = field(default_factory=lambda: CHAPTER_SPEC)
    batch: int = 8
    dtype: str = "float64"
    seed: int = 0
    optimizer: Optimizer = Optimizer.SGD  # exercise 3: the optimizer whose state is counted
    setting: Setting = Setting.QUICK  # exercise 5
    dot: str | None = None  # exercises 1 and 2: write the graph as Graphviz DOT here
    png: str | None = None  # exercises 1 and 2: draw the graph with matplotlib here (no system program needed)
    out: str | None = None  # exercise 5: folder for the compare report (None: no files)

    def __post_init__(self) -> None:
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise ValueError(f"batch: expected an integer >= 1, got {self.batch!r}")
        parse_dtype(self.dtype)
        object.__setattr__(self, "exercise", Exercise(self.exercise))
        object.__setattr__(self, "setting", Setting(self.setting))
        object.__setattr__(self, "optimizer", as_optimizer(self.optimizer))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as torch names it."""
        return parse_dtype(self.dtype)


def minibatch(cfg: ChapterConfig, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs x (n x d) and labels y: class indices, or one-hot rows for squared error."""
    n = cfg.batch if rows is None else rows
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x = torch.randn(n, cfg.spec.widths[0], generator=gen, dtype=torch.float64).to(cfg.torch_dtype)
    y = torch.randint(0, cfg.spec.widths[-1], (n,), generator=gen)
    if cfg.spec.loss is Loss.SQUARED_ERROR:
        y = torch.nn.functional.one_hot(y, cfg.spec.widths[-1]).to(cfg.torch_dtype)
    return x, y


def model(cfg: ChapterConfig) -> PipeModel:
    """The chapter's model with seeded parameters in the configured dtype."""
    return PipeModel.from_spec(cfg.spec, seed=cfg.seed, dtype=cfg.torch_dtype)


def shape_text(shape: tuple[int, ...] | torch.Size) -> str:
    """A shape as the chapter writes dimensions: 5 x 4, 8, or scalar."""
    return " x ".join(str(d) for d in shape) if len(shape) else "scalar"
