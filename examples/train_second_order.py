"""Second-order derivative training with explicit objective terms and a resumable run.

Composes value, first- and second-derivative terms (the network's jet along the cube's six
coordinates by one Taylor-mode pass) and trains with checkpoints in ``--out``: stop it
(ctrl-C, a killed job) and run the same command again to continue where it stopped.

Run: ``python examples/train_second_order.py [--out runs/second] [--seconds 120] [--directions K] [--quick]``
"""

from __future__ import annotations

import argparse
import tempfile

from manifoldtrain.data import generate_jets
from manifoldtrain.evaluation import evaluate
from manifoldtrain.manifolds import Cube
from manifoldtrain.nn import MLPConfig, build_model
from manifoldtrain.objectives import DerivativeTerm, Objective, ValueTerm
from manifoldtrain.training import Trainer, TrainConfig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", default=None, help="run directory for checkpoints (default: a temporary one)")
    parser.add_argument("--seconds", type=float, default=120.0, help="training budget")
    parser.add_argument("--directions", type=int, default=None, help="k random directions instead of all pairs")
    parser.add_argument("--quick", action="store_true", help="a few seconds on a tiny cube")
    args = parser.parse_args(argv)
    if args.quick:
        cube, n_train, hidden, seconds = Cube(image_size=15), 64, (16,), 2.0
    else:
        cube, n_train, hidden, seconds = Cube(), 1000, (256, 256, 256), args.seconds

    train, test = generate_jets(cube, n_train + 500, seed=0).split(500, seed=0)
    model = build_model(MLPConfig(hidden=hidden), train.inputs.value, train.targets.value)
    objective = Objective((
        ValueTerm(),                                                 # N(x) ~ y
        DerivativeTerm(1, directions=args.directions),               # N'(x) x_i ~ y_i
        DerivativeTerm(2, weight=0.03, directions=args.directions),  # N''(x)[x_i, x_j] + N'(x) x_ij ~ y_ij
    ))
    run_dir = args.out or tempfile.mkdtemp(prefix="second-order-")
    config = TrainConfig(epochs=10**6, time_budget=seconds, eval_every=0, eval_interval=seconds / 6)
    trainer = Trainer(model, objective, train, test, config, checkpoint_dir=run_dir)
    history = trainer.fit()  # resumes from run_dir/checkpoint.pt if a previous run stopped
    for record in history.records:
        if "test" in record:
            print(f"  {record['seconds']:6.1f} s  epoch {record['epoch']:4d}  test RMSE {record['test']['rmse']:.3e}")
    print(f"second-order training: {evaluate(model, test)}; checkpoint in {run_dir}")


if __name__ == "__main__":
    main()
