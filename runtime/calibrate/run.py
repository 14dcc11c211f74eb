"""A run's two predictions, made before its timed steps: calibrate, then forecast *this run* and *on K devices*."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from partition.cost import Optimizer, as_dtype
from partition.memory import plan_memory
from partition.timing import LinkModel, LinkPreset
from runtime.calibrate.build import activation_bytes, calibrate_pipeline
from runtime.calibrate.costs import CostModel, Origin
from runtime.calibrate.forecast import Forecast, on_k_devices, this_run
from runtime.calibrate.link import cached_link
from runtime.engine.pipeline import OptimizerFactory, Pipeline

LINK_HELP = ("link for the prediction on K devices: measured (this run's own link; free between stages on one device), "
             "cached (the last link measured between processes on this machine), nvlink, pcie, ethernet, "
             "or LATENCY,BANDWIDTH in seconds and bytes/s like 5e-6,25e9 (presets and given links overlap transfers "
             "with compute; a measured one starts each transfer when its receive is posted, as gloo does)")


def state_kind(optimizer: str, momentum: float) -> Optimizer:
    """The memory model's optimizer state for a training optimizer name ("sgd", "adam") and its momentum."""
    if optimizer == "adam":
        return Optimizer.ADAM
    return Optimizer.MOMENTUM if momentum > 0 else Optimizer.SGD


def k_device_link(text: str, measured: LinkModel) -> tuple[LinkModel, str, Origin]:
    """The link named by ``text`` (see LINK_HELP): (model, name, origin); ValueError names the flag."""
    text = text.strip().lower()
    if text == "measured":
        return measured, "measured", Origin.MEASURED
    if text == "cached":
        link, entry = cached_link()
        return link, f"cached ({entry['conditions'].get('transport')}, {entry.get('measured_at')})", Origin.MEASURED
    try:
        return LinkPreset(text).link, text, Origin.GIVEN
    except ValueError:
        pass
    try:
        lat, bw = (float(v) for v in text.split(","))
        return LinkModel(lat, bw), "given", Origin.GIVEN
    except ValueError:
        raise ValueError(f"link: expected measured, cached, {', '.join(p.value for p in LinkPreset)} or LATENCY,BANDWIDTH, "
                         f"got {text!r}") from None


@dataclass(frozen=True)
class RunPrediction:
    """The cost model and both forecasts of one run, and the link the K-device one assumes."""

    model: CostModel
    here: Forecast
    k_devices: Forecast
    link_name: str
    link_origin: Origin
    activation_bytes: tuple[float, ...]
    peak_memory: tuple[int, ...]  # predicted bytes per rank
    concurrent: bool
    k_link: LinkModel = LinkModel()

    def to_json(self) -> dict:
        """Both predictions with their bases and terms, and the cost model with every origin."""
        bw = self.k_link.bandwidth
        return {"predicted_step_time": self.here.step_time, "prediction_basis": self.here.basis,
                "predicted_step_time_k_devices": self.k_devices.step_time,
                "prediction_basis_k_devices": self.k_devices.basis,
                "predicted_bubble_fraction_k_devices": self.k_devices.bubble_fraction,
                "predicted_terms": self.here.terms, "predicted_peak_memory_per_rank": list(self.peak_memory),
                "link_k_devices": {"name": self.link_name, "origin": self.link_origin.value,
                                   "latency": self.k_link.latency, "bandwidth": None if math.isinf(bw) else bw,
                                   "rendezvous": self.k_link.rendezvous},
                "cost_model": self.model.to_json()}


def predict_run(pipe: Pipeline, make_optimizer: OptimizerFactory, x: torch.Tensor, y: torch.Tensor, batch: int,
                concurrent: bool, timeout: float, link: str, optimizer: Optimizer) -> RunPrediction:
    """Calibrate ``pipe`` here and forecast its step both ways (every rank calls this under torchrun)."""
    model, _ = calibrate_pipeline(pipe, make_optimizer, x, y, batch, concurrent, timeout)
    rows = batch // pipe.cfg.microbatches
    nbytes = activation_bytes(pipe, rows)
    here = this_run(pipe.schedule, model, pipe.cfg.ranges, nbytes, concurrent)
    k_link, name, origin = k_device_link(link, model.link)
    k = on_k_devices(pipe.schedule, model, pipe.cfg.ranges, k_link, nbytes, name)
    dtype = as_dtype(str(pipe.cfg.dtype).removeprefix("torch."))
    stages = plan_memory(pipe.cfg.spec, pipe.cfg.ranges, rows, dtype, optimizer, k.sim.peak_inflight,
                         k.sim.peak_deferred_w)
    per_rank = tuple(sum(stages[s].total for s in pipe.schedule.stages_of(r)) for r in range(pipe.schedule.num_ranks))
    return RunPrediction(model, here, k, name, origin, tuple(nbytes), per_rank, concurrent, k_link)


def format_predictions(results: dict) -> str:
    """The printed lines: this run's prediction against the measured median, the K-device figure, the contributors."""
    meas = results["measured_step_time"]
    here, k = results["predicted_step_time"], results["predicted_step_time_k_devices"]
    err = results["prediction_error"]
    lines = [f"step time, this run: predicted {here * 1e3:.3g} ms before the run, measured {(meas['median'] or 0) * 1e3:.3g} ms "
             f"(median of {meas['n']} steps), error {'-' if err is None else f'{err:+.1%}'}",
             f"step time, {results['prediction_basis_k_devices']}: predicted {k * 1e3:.3g} ms "
             f"(bubble {results['predicted_bubble_fraction_k_devices']:.1%})"]
    return "\n".join(lines + results["prediction_explained"]["text"].split("\n")[1:])
