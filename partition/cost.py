"""Per-layer cost model of the chapter's MLP: F/B/W FLOPs, parameter/optimizer bytes, saved and cut bytes.

Counting conventions, per sample (multiply by the microbatch n; every term is linear in n):

* F of layer l (W of shape (out, in)): the product x W^T is 2*in*out FLOPs, the bias add out,
  phi out more (one FLOP per element) when an activation follows the layer.
* B: dJ/dz = dJ/dh * phi'(h) costs out (one multiply per element; only when phi follows), and
  dJ/dx = g W costs 2*out*in, except on layer 0: its input is data, needs no gradient, and the
  runtime's LinearFn skips that product (``ctx.needs_input_grad[0]`` is False).
* W: dJ/dW = g^T x is 2*out*in, dJ/db = sum_rows g is out.
* The loss, its gradient, and the l2 term's lambda*W (once per step, not per sample) are not counted:
  they are O(out) per sample or O(params) per step, small beside the matrix products.

Bytes saved from forward to backward (what ``saved_tensors_hooks`` sees, parameters excluded): each
Linear saves its input x (in elements); each phi saves its output h, which *is* the next Linear's
input (no extra bytes); the loss saves o (widths[-1] elements) and its target (cross-entropy: one
int64 class index; squared-error: widths[-1] elements of the compute dtype). So layer l keeps
in*dsize, and the last layer also o and the target. With the backward split into B and W, a layer
additionally keeps g = dJ/dz (out elements) from B until W runs (``deferred_w_bytes_per_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from partition.spec import Loss, MLPSpec
from partition.timing import StageCost

INT64_BYTES = 8


class DType(Enum):
    """Compute dtype of parameters, activations and gradients (torch-free names)."""

    FLOAT64 = "float64"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"

    @property
    def nbytes(self) -> int:
        """Bytes per element."""
        return {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}[self.value]


class Optimizer(Enum):
    """Optimizer whose state is kept per parameter (in the parameters' dtype)."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"

    @property
    def states(self) -> int:
        """Tensors of optimizer state per parameter tensor: SGD 0, momentum 1, Adam 2 (m and v)."""
        return {"sgd": 0, "momentum": 1, "adam": 2}[self.value]


@dataclass(frozen=True)
class LayerCost:
    """One layer's costs. FLOPs and ``*_per_sample`` bytes are per sample; the rest are per model copy."""

    flops_f: int
    flops_b: int
    flops_w: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    saved_bytes_per_sample: int
    boundary_bytes_per_sample: int
    deferred_w_bytes_per_sample: int

    @property
    def static_bytes(self) -> int:
        """Parameters + gradients + optimizer state: bytes held whatever the schedule."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    def flops(self, microbatch: int) -> tuple[int, int, int]:
        """(F, B, W) FLOPs for a microbatch of ``microbatch`` samples."""
        return (self.flops_f * microbatch, self.flops_b * microbatch, self.flops_w * microbatch)


def target_bytes_per_sample(spec: MLPSpec, dtype: DType) -> int:
    """Bytes of one sample's target as the loss saves it: an int64 class index, or a float row."""
    if spec.loss is Loss.CROSS_ENTROPY:
        return INT64_BYTES
    return spec.widths[-1] * dtype.nbytes


def layer_costs(
    spec: MLPSpec, dtype: DType | str = DType.FLOAT32, optimizer: Optimizer | str = Optimizer.SGD
) -> tuple[LayerCost, ...]:
    """Costs of every layer of ``spec`` (see the module docstring for what is counted)."""
    dtype = as_dtype(dtype)
    optimizer = as_optimizer(optimizer)
    size = dtype.nbytes
    last = spec.num_layers - 1
    costs = []
    for layer in range(spec.num_layers):
        out_f, in_f = spec.layer_shape(layer)
        bias = out_f if spec.layer_has_bias(layer) else 0
        phi = out_f if spec.has_activation(layer) else 0
        input_grad = 2 * out_f * in_f if layer > 0 else 0
        params = spec.num_parameters(layer) * size
        saved = in_f * size
        if layer == last:
            saved += out_f * size + target_bytes_per_sample(spec, dtype)
        costs.append(
            LayerCost(
                flops_f=2 * in_f * out_f + bias + phi,
                flops_b=input_grad + phi,
                flops_w=2 * out_f * in_f + bias,
                param_bytes=params,
                grad_bytes=params,
                optimizer_bytes=optimizer.states * params,
                saved_bytes_per_sample=saved,
                boundary_bytes_per_sample=0 if layer == last else out_f * size,
                deferred_w_bytes_per_sample=out_f * size,
            )
        )
    return tuple(costs)


def step_flops(spec: MLPSpec, batch: int) -> int:
    """FLOPs of one forward + backward over ``batch`` rows (F + B + W of every layer; layer 0 has no input
    gradient, so this is 6 x params x batch less 2 x widths[0] x widths[1] x batch, plus the element-wise terms)."""
    return sum(c.flops_f + c.flops_b + c.flops_w for c in layer_costs(spec)) * batch


def flop_times(costs: Sequence[LayerCost], flops_per_second: float, microbatch: int) -> tuple[StageCost, ...]:
    """Per-layer F/B/W seconds for one microbatch on a device running ``flops_per_second``."""
    if not flops_per_second > 0:
        raise ValueError(f"flops_per_second: expected a rate > 0, got {flops_per_second!r}")
    if microbatch < 1:
        raise ValueError(f"microbatch: expected an integer >= 1, got {microbatch!r}")
    scale = microbatch / flops_per_second
    return tuple(StageCost(c.flops_f * scale, c.flops_b * scale, c.flops_w * scale) for c in costs)


def as_dtype(value: DType | str) -> DType:
    """A :class:`DType` from a member or its name ("float32", "bf16" and "fp16" accepted too)."""
    if isinstance(value, DType):
        return value
    aliases = {"fp64": "float64", "double": "float64", "fp32": "float32", "float": "float32",
               "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    text = str(value).lower().removeprefix("torch.")
    text = aliases.get(text, text)
    for member in DType:
        if member.value == text:
            return member
    raise ValueError(f"dtype: unknown value {value!r}; choose one of {', '.join(m.value for m in DType)}")


def as_optimizer(value: Optimizer | str) -> Optimizer:
    """An :class:`Optimizer` from a member or its name ("sgd", "momentum", "adam")."""
    if isinstance(value, Optimizer):
        return value
    for member in Optimizer:
        if member.value == str(value).lower():
            return member
    raise ValueError(f"optimizer: unknown value {value!r}; choose one of {', '.join(m.value for m in Optimizer)}")
