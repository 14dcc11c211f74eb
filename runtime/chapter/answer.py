"""One entry point for the exercise commands: run the exercise asked for and return its figures and its text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from runtime.chapter.bias import bias_text, exercise_bias
from runtime.chapter.common import ChapterConfig, Exercise
from runtime.chapter.memory_use import exercise_memory, memory_text
from runtime.chapter.partition_choice import exercise_partition, partition_text
from runtime.chapter.second_order import exercise_second_order, second_order_text
from runtime.chapter.shapes import exercise_shapes, shapes_text

EXERCISES: MappingProxyType[Exercise, tuple[Callable[[ChapterConfig], dict], Callable[[dict], str]]] = MappingProxyType({
    Exercise.SHAPES: (exercise_shapes, shapes_text),
    Exercise.BIAS: (exercise_bias, bias_text),
    Exercise.MEMORY: (exercise_memory, memory_text),
    Exercise.SECOND_ORDER: (exercise_second_order, second_order_text),
    Exercise.PARTITION: (exercise_partition, partition_text),
})


@dataclass(frozen=True)
class Answer:
    """An exercise's figures (JSON-ready) and the short text printed for it."""

    report: dict
    text: str


def answer(cfg: ChapterConfig) -> Answer:
    """Run ``cfg.exercise`` on ``cfg``'s model now."""
    run, text = EXERCISES[cfg.exercise]
    report = run(cfg)
    report["model"] = {"widths": list(cfg.spec.widths), "activation": cfg.spec.activation.value,
                       "bias": cfg.spec.bias_name, "l2": cfg.spec.l2, "loss": cfg.spec.loss.value}
    return Answer(report, text(report))
