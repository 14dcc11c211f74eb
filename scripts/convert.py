"""Move models in and out of pipegraph: a checkpoint to a plain nn.Sequential state_dict file, and back.

    python scripts/convert.py export ckpt model.pt      # last complete epoch of ckpt/ -> nn.Sequential state_dict
    python scripts/convert.py import model.pt ckpt --activation tanh --loss squared-error --l2 1e-4
    python scripts/train.py --checkpoint-dir ckpt --resume --widths 64,128,10 --activation tanh --loss squared-error \\
        --l2 1e-4 --epochs 5                            # fine-tune the imported model

The exported file loads into ``nn.Sequential(nn.Linear, phi, ..., nn.Linear)`` with ``load_state_dict``.
A state_dict does not say the activation, the loss or l2: give them to ``import`` (the layers with a
bias are read from the file; ``--bias`` given explicitly must agree with it).
"""

from __future__ import annotations

import argparse

from _cli import HelpFormatter, add_bias_flags, run_main

from partition.spec import Activation, Loss

FROM_FILE = "file"  # --bias default: the layers whose bias the file holds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --help explains every flag."""
    p = argparse.ArgumentParser(prog="convert.py", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="checkpoint folder -> nn.Sequential state_dict file")
    e.add_argument("checkpoint_dir", help="a folder written by train.py --checkpoint-dir")
    e.add_argument("out", help="the state_dict file to write")
    i = sub.add_parser("import", help="nn.Sequential state_dict file -> checkpoint folder (epoch 0) for --resume",
                       formatter_class=HelpFormatter)
    i.add_argument("state_dict", help="a file written by torch.save(model.state_dict())")
    i.add_argument("checkpoint_dir", help="the folder to write (refused if it holds a checkpoint, unless --overwrite)")
    i.add_argument("--activation", default=Activation.RELU.value, choices=[a.value for a in Activation],
                   help="phi after every hidden layer (a state_dict does not say)")
    i.add_argument("--loss", default=Loss.CROSS_ENTROPY.value, choices=[x.value for x in Loss],
                   help="l(o, y) (a state_dict does not say)")
    i.add_argument("--l2", type=float, default=0.0, help="lambda of the l2 term s = lambda/2 sum ||W||^2")
    add_bias_flags(i, default=FROM_FILE)
    i.add_argument("--overwrite", action="store_true", help="replace a checkpoint the folder already holds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen direction and say what was written."""
    from runtime.train.export import export_state_dict, import_state_dict

    a = parse_args(argv)
    if a.command == "export":
        state = export_state_dict(a.checkpoint_dir, a.out)
        print(f"wrote {a.out}: nn.Sequential state_dict with keys {', '.join(state)}")
    else:
        spec = import_state_dict(a.state_dict, a.checkpoint_dir, a.activation, a.loss, a.l2,
                                 None if a.bias == FROM_FILE else a.bias, a.overwrite)
        print(f"wrote {a.checkpoint_dir} at epoch 0: widths {','.join(map(str, spec.widths))}, bias {spec.bias_name}; "
              f"continue with train.py --checkpoint-dir {a.checkpoint_dir} --resume")
    return 0


if __name__ == "__main__":
    run_main(main, "convert.py")
