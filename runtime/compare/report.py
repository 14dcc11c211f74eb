"""The experiment's report: Markdown and CSV written from the results JSON alone, plus the JSON and the PNG plots.

Everything here reads the plain results dictionary (as loaded back from JSON), so that ``compare.py --from-json``
rewrites the same Markdown and CSV without running anything.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from types import MappingProxyType

from partition.units import count, format_bytes
from runtime.compare.pareto import PNG as PARETO_PNG
from runtime.compare.pareto import pareto_markdown, write_pareto_plot
from runtime.compare.plots import FIGURES, write_plots
from runtime.output import json_text, markdown_table, write_text

FILES = MappingProxyType({"json": "compare.json", "markdown": "compare.md", "csv": "compare.csv"})
CSV_COLUMNS = ("id", "label", "kind", "schedule", "devices", "replicas", "stages", "microbatches", "microbatch_size",
               "minibatch", "lr",
               "ranges", "feasible", "reason", "predicted_step_time", "prediction_basis", "measured_step_time",
               "prediction_error", "predicted_step_time_k_devices", "predicted_samples_per_s", "measured_samples_per_s",
               "predicted_peak_bytes", "measured_peak_bytes", "memory_error", "optimizer_steps", "samples_seen",
               "final_loss", "test_accuracy", "time_to_target_s")


def _t(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _b(values: list) -> str:
    return " / ".join(format_bytes(v) for v in values) if values else "-"


def _setup_text(r: dict) -> list[str]:
    s = r["setup"]
    spec = s["spec"]
    cap = s["memory_cap"]
    if cap is None:
        cap_text = "no memory cap"
    elif s["memory_cap_text"].strip().lower() == "auto":
        cap_text = (f"at most {format_bytes(cap)} each (auto: {s['auto_cap_share']:.0%} of what one device needs for the "
                    f"whole batch B, so that B does not fit on one)")
    else:
        cap_text = f"at most {format_bytes(cap)} each"
    widths = "-".join(str(w) for w in spec["widths"])
    bias = f"bias {spec['bias']}"  # all, hidden, none or layer indices (older files: true/false)
    return [f"The chapter's last exercise, measured: the {widths} MLP ({spec['activation']}, {bias}, "
            f"l2 {spec['l2']:g}, {spec['loss']}) on {s['dataset']} ({s['train_samples']} training / {s['test_samples']} "
            f"test samples), global batch B={s['batch']}, K = {count(s['devices'], 'device')} with {cap_text}. {s['dtype']} on "
            f"{s['device']} ({s['threads']} thread{'s' if s['threads'] != 1 else ''}), {s['mode']}. "
            f"{s['optimizer'].upper()} (momentum {s['momentum']:g}), lr {s['lr']:g} at B; smaller minibatches use "
            f"{s['lr_rule']}. Every run starts from the same seeded parameters (seed {s['seed']}) and sees the same "
            f"{s['samples_per_epoch']} samples per epoch in the same order, for up to {s['epochs']} epochs.", ""]


def _candidates(r: dict) -> list[str]:
    rows = [[f"`{e['id']}`", e["label"], f"{e['devices']} x {e['stages'] // e['devices'] or 1}",
             _replicas(e) + f"{e['microbatches']} x {e['microbatch_size']}", f"{e['lr']:.4g}", e["ranges"] or "-",
             "yes" if e["feasible"] else f"**no**: {e['reason']}"] for e in r["candidates"]]
    lines = ["## Candidates", "", *markdown_table(["candidate", "what", "devices x stages each",
                                                  "(replicas x) m x microbatch", "lr", "layers per stage", "fits the cap"],
                                                 rows), ""]
    if any(e.get("replicas", 1) > 1 for e in r["candidates"]):
        lines += ["PP x DP candidates (`-dpD`): D replicas of a pipeline over K/D devices (one device each: data "
                  "parallel), each replica taking B/D of the batch in m microbatches, the replicas summing their "
                  "gradients (a ring all-reduce per stage) before the step. In one process they are emulated by one "
                  "pipeline of D x m microbatches of B/(D m) rows, the same arithmetic.", ""]
    return lines


def _replicas(e: dict) -> str:
    """``"D x "`` for a PP x DP candidate, else nothing."""
    return f"{e['replicas']} x " if e.get("replicas", 1) > 1 else ""


def _step_times(r: dict) -> list[str]:
    rows = []
    for e in r["candidates"]:
        p, m = e["predicted"], e["measured"]
        if p is None:
            continue
        st = None if m is None else m["measured_step_time"]
        meas = "-" if st is None else f"{_t(st['median'])} [{_t(st['p25'])}, {_t(st['p75'])}]"
        sps = f"{p['samples_per_second']:.0f} / " + ("-" if m is None else f"{m['samples_per_second']:.0f}")
        k_dev = (f"{_t(p['predicted_step_time_k_devices'])}, {p['samples_per_second_k_devices']:.0f}/s, "
                 f"bubble {p['bubble_fraction_k_devices']:.0%}")
        rows.append([f"`{e['id']}`", _t(p["predicted_step_time"]), meas, _pct((e["errors"] or {}).get("prediction_error")),
                     sps, k_dev])
    k = r["setup"]["devices"]
    return ["## Step time: predicted vs measured", "",
            "The predicted step is what the measuring process does (see *How the figures are made*); "
            f"the last column is the simulator's prediction on {count(k, 'real device')}, which nothing measures in "
            "single-process emulation.", "",
            *markdown_table(["candidate", "predicted step (this run)", "measured step: median [p25, p75]", "error",
                             "samples/s predicted / measured",
                             f"on {count(k, 'device')} (simulator): step, samples/s, bubble"], rows), ""]


def _memory(r: dict) -> list[str]:
    rows = []
    for e in r["candidates"]:
        m = e["measured"]
        predicted = [d["total"] for d in e["predicted_memory"]]
        if not predicted:
            continue
        measured = "-" if m is None else _b(m["memory_per_device"])
        if m is not None and m["cuda_max_allocated"]:
            measured += " (CUDA max allocated: " + ", ".join(f"{dev} {format_bytes(v)}"
                                                              for dev, v in m["cuda_max_allocated"].items()) + ")"
        rows.append([f"`{e['id']}`", _b(predicted), measured, _pct((e["errors"] or {}).get("memory"))])
    cap = r["setup"]["memory_cap"]
    return [f"## Peak memory per device (cap {format_bytes(cap) if cap is not None else 'none'})", "",
            *markdown_table(["candidate", "predicted per device", "measured per device", "largest error"], rows), ""]


def _curve(r: dict) -> list[str]:
    """Mean training loss at up to eight epochs (the last included), with the training seconds spent so far."""
    runs = [e for e in r["candidates"] if e["training"] is not None]
    if not runs:
        return []
    count = max(len(e["training"]["epochs"]) for e in runs)
    picks = sorted({round(i * (count - 1) / 7) for i in range(8)}) if count > 8 else list(range(count))
    rows = []
    for e in runs:
        cells, elapsed = {}, 0.0
        for i, h in enumerate(e["training"]["epochs"]):
            elapsed += h["seconds"]
            cells[i] = f"{h['train_loss']:.4f} @ {_t(elapsed)}"
        rows.append([f"`{e['id']}`", *(cells.get(i, "-") for i in picks)])
    return ["Mean training loss per epoch, and the training time spent by its end:", "",
            *markdown_table(["candidate", *(f"epoch {i + 1}" for i in picks)], rows), ""]


def _training(r: dict) -> list[str]:
    target = r["setup"]["target_loss"]
    rows = []
    for e in r["candidates"]:
        tr = e["training"]
        if tr is None:
            continue
        rows.append([f"`{e['id']}`", tr["optimizer_steps"], tr["samples_seen"], _t(e["measured"]["train_seconds"]),
                     f"{tr['final_loss']:.4f}", f"{tr['test_accuracy']:.1%}", _t(tr["time_to_target"])])
    sm = r["same_math"]
    lines = ["## Training outcome", "",
             f"Target loss {target:.4g} ({r['setup']['target_source']}); time to target = training seconds until the "
             "first epoch whose mean training loss is at or below it." if target is not None else "No run.", "",
             *markdown_table(["candidate", "optimizer steps", "samples seen", "training time", "last epoch loss", "test accuracy",
                      "time to target"], rows), "", *_curve(r)]
    if sm["reference"] is not None:
        lines += ["Same math: every run whose step is the whole batch B (pipelines, PP x DP, accumulation, one device at B) "
                  f"computes the same steps; largest per-step loss difference against `{sm['reference']}` "
                  f"({r['setup']['dtype']} rounding only):", "",
                  *markdown_table(["candidate", "max abs loss difference per step"],
                          [[f"`{cid}`", f"{d:.2e}"] for cid, d in sm["max_abs_step_loss_difference"].items()]), ""]
    small = [e for e in r["candidates"] if e["training"] is not None and e["minibatch"] < r["setup"]["batch"]]
    if small:
        lines += ["Smaller minibatches change the math: "
                  + "; ".join(f"`{e['id']}` takes {e['training']['optimizer_steps']} steps of b={e['minibatch']} at lr "
                              f"{e['lr']:.4g}" for e in small)
                  + f" ({r['setup']['lr_rule']}), each gradient averaging fewer samples, so a noisier estimate.", ""]
    return lines


def _method(r: dict) -> list[str]:
    err = r["prediction_errors"]
    st, mem = err["prediction_error"], err["memory"]
    return ["## How the figures are made", "",
            "- Predicted step time (this run): per-layer F/B/W seconds from `runtime.train.profile` (profiled once per "
            "microbatch size before any run, the caches overwritten between calls as the rest of a step does), plus the "
            "runtime's per-action overhead measured on a skeleton of the model (same input and "
            "output widths, hidden widths 1, same schedule and stages; timed right before and after each run and averaged, "
            "or the smaller where they disagree by over 20%), plus the optimizer's work on the real parameters. "
            "In one process every stage runs in turn on the one device, so the compared prediction is the sum over "
            "stages and microbatches; under torchrun it is the simulator's makespan, transfers costing what the link measured "
            "at start-up says. The K-device column is the simulator's. Each pipeline's `prediction_explained` in the JSON "
            "names the terms that contributed most to its error. A PP x DP candidate runs in one process as one pipeline "
            "of D x m microbatches (every replica's in turn), under torchrun as D replicas over the processes (this "
            "run's prediction then adds each stage's all-reduce on the measured link); on K devices it is one "
            "replica's simulated schedule of m microbatches plus each stage's ring all-reduce over the D replicas on "
            "the link (the default link in one process, which makes the reductions free), the per-step overhead shared "
            "by the devices of one replica.",
            "- Predicted memory: the analytic model (`partition.memory`), with the simulator's in-flight and deferred-W "
            "counts per stage; a device holding several stages adds them. It adds the gradients to the peak of the "
            "activations, an upper bound where the gradient buffers appear only at the first backward (measured lower), "
            "and it counts no weight-gradient inputs for a fused backward, while the runtime's BW runs B for all the "
            "stage's layers before their W and so holds one microbatch's g meanwhile (measured higher). Emulated in one "
            "process, a stage may also queue more than one gradient message for its neighbour.",
            f"- Measured memory: {r['setup']['memory_method']}.",
            f"- Step-time error (predicted - measured) / measured: median {_pct(st['median_abs'])[1:]} over "
            f"{len(st['per_candidate'])} runs, largest {_pct(st['max_abs'])[1:]}, largest among pipelines "
            f"{_pct(st['max_abs_pipelines'])[1:]}. Memory: median {_pct(mem['median_abs'])[1:]}, largest "
            f"{_pct(mem['max_abs'])[1:]}.", *_noisy(err), ""]


def _noisy(err: dict) -> list[str]:
    ids = err.get("noisy_step_times") or []
    if not ids:
        return []
    return [f"- Noisy timings: the step times of {', '.join(f'`{i}`' for i in ids)} spread by more than 20% between "
            "their quartiles: other processes competed for the CPU during those runs, and their errors say more about "
            "the machine than about the prediction."]


def _overhead(r: dict) -> list[str]:
    t = r["timings"]
    names = ("planning", "prediction", "reporting", "profiling", "calibration", "memory_probe", "training")
    rows = [[name.replace("_", " "), _t(t[name]), f"{t[name] / t['total']:.1%}"] for name in names]
    return ["## Scheduler overhead", "",
            f"Total {_t(t['total'])}. The scheduler's own work (planning, simulation, reporting) took {_t(t['overhead'])}, "
            f"{t['overhead_fraction']:.1%} of the run; with the measurements made for the predictions (profiling, skeleton "
            f"calibration, memory probes) everything but training took {t['non_training_fraction']:.1%}.", "",
            *markdown_table(["part", "seconds", "share"], rows), ""]


def markdown(r: dict) -> str:
    """The whole Markdown report (a function of the results JSON only)."""
    rec = r["recommendation"]
    k = r["setup"]["devices"]
    head = f"**{rec['label']}** (`{rec['id']}`)" if rec["id"] else "**nothing fits**"
    lines = [f"# Partition over {count(k, 'device')}, or a smaller minibatch on one?", "", *_setup_text(r),
             "## Recommendation under the cap", "", head, "", *(f"- {why}" for why in rec["reasons"]), "",
             *_candidates(r), *_step_times(r), *_memory(r), *pareto_markdown(r), *_training(r), *_method(r),
             *_overhead(r), "## Figures", ""]
    lines += [f"![{title}]({name})" for name, title in FIGURES.items()]
    return "\n".join(lines) + "\n"


def csv_text(r: dict) -> str:
    """One row per candidate with its main predicted and measured figures."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in r["candidates"]:
        p, m, err, tr = e["predicted"] or {}, e["measured"] or {}, e["errors"] or {}, e["training"] or {}
        predicted = [d["total"] for d in e["predicted_memory"]]
        w.writerow([e["id"], e["label"], e["kind"], e["schedule"], e["devices"], e.get("replicas", 1), e["stages"],
                    e["microbatches"],
                    e["microbatch_size"], e["minibatch"], e["lr"], e["ranges"] or "", e["feasible"], e["reason"],
                    p.get("predicted_step_time", ""), p.get("prediction_basis", ""),
                    m.get("measured_step_time", {}).get("median", ""), err.get("prediction_error", ""),
                    p.get("predicted_step_time_k_devices", ""), p.get("samples_per_second", ""),
                    m.get("samples_per_second", ""), max(predicted) if predicted else "",
                    max(m["memory_per_device"]) if m else "", err.get("memory", ""), tr.get("optimizer_steps", ""),
                    tr.get("samples_seen", ""), tr.get("final_loss", ""), tr.get("test_accuracy", ""),
                    tr.get("time_to_target", "")])
    return buf.getvalue()


def close_timings(timings: dict, started: float, reporting: float) -> None:
    """Add the reporting seconds, the total since ``started``, and the overhead shares to ``timings``."""
    timings["reporting"] = reporting
    timings["total"] = time.perf_counter() - started
    timings["overhead"] = timings["planning"] + timings["prediction"] + timings["reporting"]
    timings["overhead_fraction"] = timings["overhead"] / timings["total"]
    timings["non_training_fraction"] = 1.0 - timings["training"] / timings["total"]


def write_report(r: dict, out: str | Path, started: float | None) -> None:
    """Write CSV, PNGs, JSON and Markdown under the folder ``out``; with ``started``, also time the reporting.

    Everything is written from the JSON round trip of ``r``, exactly what ``--from-json`` reads back.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    data = json.loads(json.dumps(r))
    write_text(folder / FILES["csv"], csv_text(data))
    write_plots(data, folder)
    write_pareto_plot(data, folder / PARETO_PNG)
    if started is not None:
        close_timings(r["timings"], started, time.perf_counter() - t)
    text = json_text(r)
    write_text(folder / FILES["json"], text)
    write_text(folder / FILES["markdown"], markdown(json.loads(text)))
