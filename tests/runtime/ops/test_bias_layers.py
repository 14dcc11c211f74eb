"""Bias chosen per layer: the spec's parser, and gradients against plain autograd in the model and the pipeline."""

import pytest
import torch
from torch import nn

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec, parse_bias
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine
from runtime.ops.model import PipeModel

F64 = torch.float64
WIDTHS = (5, 7, 6, 4, 3)  # four layers: 0, 1, 2 are hidden, 3 is the output layer
CHOICES = {"hidden": {0, 1, 2}, "all": {0, 1, 2, 3}, "none": set(), "0,2": {0, 2}, "3": {3}}


@pytest.mark.parametrize("text,layers", CHOICES.items())
def test_bias_choice_resolves_to_layers_and_prints_back(text, layers):
    spec = MLPSpec(WIDTHS, bias=text)
    assert spec.bias == frozenset(layers)
    assert [spec.layer_has_bias(layer) for layer in range(4)] == [layer in layers for layer in range(4)]
    assert MLPSpec(WIDTHS, bias=spec.bias_name).bias == spec.bias
    assert spec.num_parameters() == sum(o * i + (o if k in layers else 0) for k, (i, o) in enumerate(zip(WIDTHS, WIDTHS[1:])))


def test_booleans_still_mean_all_and_none():
    assert MLPSpec(WIDTHS, bias=True).bias_name == "all" and MLPSpec(WIDTHS, bias=False).bias_name == "none"
    assert MLPSpec(WIDTHS, bias=frozenset({1})).bias_name == "1"
    assert MLPSpec((3, 2), bias="hidden").bias_name == "none"  # no hidden layer


@pytest.mark.parametrize("value,message", [("4", "layer 4"), ("0,x", "0-based layer indices"), ("-1", ">= 0"),
                                           ("", "0-based layer indices"), ([True], "layer True")])
def test_bad_bias_choices_are_one_line_errors(value, message):
    with pytest.raises(ValueError, match="bias") as err:
        MLPSpec(WIDTHS, bias=value)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parse_bias_keeps_words_and_reads_indices():
    assert parse_bias(" Hidden ") == "hidden" and parse_bias("2,0,2") == frozenset({0, 2})


def _autograd_reference(spec, params, x, y):
    """J under plain autograd over torch.nn.functional, on copies of ``params``; returns their gradients."""
    leaves = [(w.detach().clone().requires_grad_(), None if b is None else b.detach().clone().requires_grad_())
              for w, b in params]
    h = x
    for layer, (w, b) in enumerate(leaves):
        h = nn.functional.linear(h, w, b)
        if spec.has_activation(layer):
            h = torch.tanh(h)
    j = nn.functional.cross_entropy(h, y) + spec.l2 / 2 * sum(w.pow(2).sum() for w, _ in leaves)
    j.backward()
    return [p.grad for pair in leaves for p in pair if p is not None]


@pytest.mark.parametrize("text", CHOICES)
def test_model_gradients_equal_plain_autograd(text):
    spec = MLPSpec(WIDTHS, "tanh", text, 0.01)
    model = PipeModel.from_spec(spec, seed=2, dtype=F64)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(9, 5, generator=g, dtype=F64), torch.randint(0, 3, (9,), generator=g)
    ref = _autograd_reference(spec, model.layer_params(), x, y)
    model.objective(x, y).backward()
    got = [p.grad for pair in model.layer_params() for p in pair if p is not None]
    assert len(got) == len(ref) == 4 + len(CHOICES[text])
    for a, b in zip(got, ref):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize("text", ["hidden", "0,2"])
@pytest.mark.parametrize("engine", list(Engine))
def test_two_stage_pipeline_gradients_equal_plain_autograd(text, engine):
    spec = MLPSpec(WIDTHS, "tanh", text, 0.01)
    cfg = PipelineConfig(spec, ((0, 2), (2, 4)), ScheduleKind.ONE_F_ONE_B, 3, ("cpu", "cpu"), F64, 4, 1, True, False, engine)
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.0), LocalTransport())
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 5, generator=g, dtype=F64), torch.randint(0, 3, (6,), generator=g)
    ref = _autograd_reference(spec, PipeModel.from_spec(spec, seed=4, dtype=F64).layer_params(), x, y)
    pipe.step(x, y, 6, 0)
    got = [p.grad for s in (0, 1) for p in pipe.stages[s].parameters()]
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-12
