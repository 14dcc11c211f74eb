"""One rank of a gloo launch that trains several configurations in one process group (for the grid tests).

    python grid_worker.py OUT_DIR '[{"stages": 2, "schedule": "1f1b", "data_parallel": 2, ...}, ...]'

Each configuration is trained through the trainer's own phases (this rank's slice of every global batch, the
dp all-reduce, clipping); then every rank writes the whole model, gathered over its pipeline, and its losses
to OUT_DIR/<index>-rank<r>.pt.
"""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from partition.schedule.actions import ScheduleKind  # noqa: E402
from partition.spec import MLPSpec, parse_widths  # noqa: E402
from runtime.comm import Backend, init_world, shutdown  # noqa: E402
from runtime.train.config import TrainConfig  # noqa: E402
from runtime.train.loop import Tally, load_training_data, run_epoch  # noqa: E402
from runtime.train.process import gather_layers, start  # noqa: E402
from runtime.train.progress import ProgressBar  # noqa: E402

BASE = TrainConfig(spec=MLPSpec(parse_widths("6,10,8,9,4")), dataset="synthetic", samples=96, batch_size=12, lr=0.05,
                   epochs=1, dtype="float64", partition="uniform", progress=False, timeout=60.0)


def main() -> None:
    out, configs = Path(sys.argv[1]), json.loads(sys.argv[2])
    world = init_world(Backend.GLOO, 60.0)  # joined here, so the trainer's runs share it and leave it open
    for i, c in enumerate(configs):
        spec = replace(BASE.spec, l2=c.pop("l2", 0.0))
        cfg = replace(BASE, spec=spec, **{**c, "schedule": ScheduleKind(c["schedule"])})
        data = load_training_data(cfg)
        proc = start(cfg)
        tally = Tally(step=0)
        history = [run_epoch(cfg, proc, data, e, tally, ProgressBar(1, "", False)) for e in range(cfg.epochs)]
        layers = gather_layers(proc.pipe, True)
        torch.save({"layers": [t for pair in layers for t in pair if t is not None],
                    "losses": [x for h in history for x in h["step_losses"]]}, out / f"{i}-rank{world.rank}.pt")
        proc.close()
    shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
