"""The issue's targets, checked against a benchmark's results: one line per target, MET or MISSED, with the figure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A speedup (or error) bound and where it comes from."""

    what: str
    bound: float
    at_least: bool = True

    def line(self, value: float | None, detail: str) -> str:
        """``MET  functions ...: 1.02x (target >= 1.00)``."""
        if value is None:
            return f"n/a     {self.what}: {detail} (no figure)"
        ok = value >= self.bound if self.at_least else value <= self.bound
        sign = ">=" if self.at_least else "<="
        return f"{'MET   ' if ok else 'MISSED'}  {self.what}: {detail} {value:.3f} (target {sign} {self.bound:.2f})"


def _median(d: dict | None) -> float | None:
    return None if not d else d["median"]


def _functions(result: dict) -> list[str]:
    gpu = result["machine"]["device"].startswith("cuda")
    out = []
    for r in result["results"]:
        if r["variant"] != "custom":
            continue
        if gpu:
            target = Target(f"functions {r['dtype']} width {r['width']}: custom vs autograd", 1.0)
        elif r["width"] >= 1024:
            target = Target(f"functions {r['dtype']} width {r['width']}: custom vs autograd (CPU, within 5%)", 0.95)
        else:
            continue
        out.append(target.line(_median(r["speedup_vs_autograd"]), "speedup"))
    return out


def _pipeline(result: dict) -> list[str]:
    out = []
    for dtype, s in result["summary"].items():
        best = s["best_ours"]
        out.append(Target(f"pipeline {dtype}: fastest of ours ({best}) vs accumulation", 1.0).line(
            _median(s["speedup_vs_accumulation"]), "speedup"))
        out.append(Target(f"pipeline {dtype}: {best} vs fastest peer ({s['best_peer']})", 1.10).line(
            _median(s["speedup_vs_best_peer"]), "speedup"))
        out.append(f"{'MET   ' if s['all_losses_agree'] else 'MISSED'}  pipeline {dtype}: every contender's loss "
                   f"matches accumulation's")
    return out


def _dist(result: dict) -> list[str]:
    ours = [r for r in result["results"] if r["group"] == "ours" and r["step_time"]]
    out = []
    for r in ours:
        name = r["variant"]
        out.append(Target(f"dist: {name} vs {r['best_peer']} (samples/s)", 1.10).line(
            _median(r.get("speedup_vs_best_peer")), "speedup"))
    return out


def _simulator(result: dict) -> list[str]:
    return [Target(f"simulator ({result['mode']}): {r['schedule']} |predicted - measured| / measured", 0.10, False).line(
        None if r["error_fraction"] is None else abs(r["error_fraction"]), "error") for r in result["results"]]


def verdicts(result: dict) -> list[str]:
    """One line per target of the issue that ``result`` (any subcommand's) speaks to."""
    check = {"functions": _functions, "pipeline": _pipeline, "dist": _dist, "simulator": _simulator}
    return check[result["benchmark"]](result) if result["benchmark"] in check else []
