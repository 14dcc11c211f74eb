"""The chapter's MLP as a frozen, validated specification (widths, activation, bias, l2, loss)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Activation(Enum):
    """Element-wise nonlinearity phi applied after every hidden layer."""

    RELU = "relu"
    TANH = "tanh"
    SIGMOID = "sigmoid"


class Loss(Enum):
    """The loss term L = l(o, y) of the chapter."""

    CROSS_ENTROPY = "cross-entropy"
    SQUARED_ERROR = "squared-error"


def parse_enum(kind: type[Enum], value: object, field: str) -> Enum:
    """Turn a string (or an enum member) into a member of ``kind``; ValueError names the field."""
    if isinstance(value, kind):
        return value
    for member in kind:
        if value == member.value or (isinstance(value, str) and value.lower() == member.name.lower()):
            return member
    choices = ", ".join(m.value for m in kind)
    raise ValueError(f"{field}: unknown value {value!r}; choose one of {choices}")


BIAS_WORDS = ("all", "hidden", "none")


def parse_bias(text: str) -> str | frozenset[int]:
    """Parse ``--bias``: "all", "hidden" (every layer phi follows), "none", or 0-based layer indices "0,2".

    Returns the word, or the indices as a frozenset; ``MLPSpec`` resolves either against its layers.
    """
    word = text.strip().lower()
    if word in BIAS_WORDS:
        return word
    try:
        layers = frozenset(int(part) for part in word.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"bias: expected all, hidden, none or 0-based layer indices like 0,2, got {text!r}") from None
    if not layers or min(layers) < 0:
        raise ValueError(f"bias: expected all, hidden, none or 0-based layer indices >= 0 like 0,2, got {text!r}")
    return layers


def resolve_bias(value: object, num_layers: int) -> frozenset[int]:
    """The set of 0-based layers with a bias, from True/False, a ``parse_bias`` string or layer indices."""
    if isinstance(value, bool):
        return frozenset(range(num_layers)) if value else frozenset()
    if isinstance(value, str):
        value = parse_bias(value)
    if value == "all":
        return frozenset(range(num_layers))
    if value == "hidden":
        return frozenset(range(num_layers - 1))
    if value == "none":
        return frozenset()
    try:
        layers = frozenset(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"bias: expected True, False, a word or layer indices, got {value!r}") from None
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < num_layers:
            raise ValueError(f"bias: layer {layer!r} is not a layer index 0..{num_layers - 1}")
    return layers


def parse_widths(text: str) -> tuple[int, ...]:
    """Parse ``"784,256,10"`` into a tuple of ints; ValueError names the field."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"widths: expected comma-separated integers like 784,256,10, got {text!r}") from None


@dataclass(frozen=True)
class MLPSpec:
    """An MLP: widths[0] inputs, widths[-1] outputs, phi after every layer but the last.

    Layer ``l`` (0-based) computes z = x W^T (+ b) with W of shape (widths[l+1], widths[l]).
    ``bias`` says which layers add a b(l): True/False, "all"/"hidden"/"none", or layer indices; it is
    stored as the frozenset of 0-based layers that have one (empty, hence falsy, for none).
    The objective is J = L + s with s = l2/2 * sum_l ||W(l)||_F^2 (biases are not decayed).
    """

    widths: tuple[int, ...]
    activation: Activation = Activation.RELU
    bias: bool | str | frozenset[int] = True
    l2: float = 0.0
    loss: Loss = Loss.CROSS_ENTROPY

    def __post_init__(self) -> None:
        widths = tuple(self.widths) if not isinstance(self.widths, str) else parse_widths(self.widths)
        if len(widths) < 2:
            raise ValueError(f"widths: need at least 2 widths (inputs and outputs), got {list(widths)}")
        for w in widths:
            if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                raise ValueError(f"widths: every width must be an integer >= 1, got {w!r} in {list(widths)}")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "activation", parse_enum(Activation, self.activation, "activation"))
        object.__setattr__(self, "loss", parse_enum(Loss, self.loss, "loss"))
        object.__setattr__(self, "bias", resolve_bias(self.bias, len(widths) - 1))
        l2 = float(self.l2)
        if not l2 >= 0.0 or l2 == float("inf"):
            raise ValueError(f"l2: lambda must be a finite number >= 0, got {self.l2!r}")
        object.__setattr__(self, "l2", l2)

    @property
    def num_layers(self) -> int:
        """Number of linear layers (weight matrices)."""
        return len(self.widths) - 1

    def layer_shape(self, layer: int) -> tuple[int, int]:
        """(out_features, in_features) of layer ``layer``."""
        return (self.widths[layer + 1], self.widths[layer])

    def has_activation(self, layer: int) -> bool:
        """Whether phi follows layer ``layer`` (every layer but the output layer)."""
        return layer < self.num_layers - 1

    def layer_has_bias(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) adds a bias b(layer+1)."""
        return layer in self.bias

    @property
    def bias_name(self) -> str:
        """The bias choice as ``--bias`` takes it: none, all, hidden, or the layer indices like 0,2."""
        if not self.bias:
            return "none"
        if len(self.bias) == self.num_layers:
            return "all"
        if self.bias == frozenset(range(self.num_layers - 1)):
            return "hidden"
        return ",".join(map(str, sorted(self.bias)))

    def num_parameters(self, layer: int | None = None) -> int:
        """Parameter count of one layer, or of the whole model when ``layer`` is None."""
        layers = range(self.num_layers) if layer is None else [layer]
        total = 0
        for l in layers:
            out_f, in_f = self.layer_shape(l)
            total += out_f * in_f + (out_f if self.layer_has_bias(l) else 0)
        return total
