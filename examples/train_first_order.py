"""First-order derivative training from a TOML config, as ``manifoldtrain train`` runs it.

The config names the manifold, data, model, objective terms and training; the run
directory gets the config, a checkpoint (a killed run resumes) and results.json.

Run: ``python examples/train_first_order.py [--out runs/first] [--quick]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from manifoldtrain.config import load_config
from manifoldtrain.experiment import run_experiment

CONFIG = """
[manifold]
kind = "cube"

[data]
n_train = 1000
n_test = 500
test_order = 2       # training needs first-order jets only; score second derivatives too

[model]
kind = "mlp"
hidden = [256, 256, 256]
activation = "tanh"

[[objective.terms]]
kind = "value"

[[objective.terms]]
kind = "derivative"
order = 1            # N'(x) x_i against y_i for the six coordinates
weight = 1.0

[train]
time_budget = 60.0
epochs = 1000000
eval_every = 0
eval_interval = 10.0
"""

QUICK = {"n_train = 1000": "n_train = 48", "n_test = 500": "n_test = 16", "[256, 256, 256]": "[16]",
         "time_budget = 60.0": "time_budget = 2.0", 'kind = "cube"': 'kind = "cube"\nimage_size = 15'}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="a few seconds on a tiny cube")
    args = parser.parse_args(argv)
    text = CONFIG
    if args.quick:
        for old, new in QUICK.items():
            text = text.replace(old, new)
    work = Path(tempfile.mkdtemp(prefix="first-order-"))
    out = Path(args.out) if args.out else work / "run"  # a run folder holds only the run's own files
    (work / "input.toml").write_text(text)
    results = run_experiment(load_config(work / "input.toml"), out)
    t = results["test"]
    print(f"first-order training, {results['epochs']} epochs in {results['seconds']:.0f} s: "
          f"test RMSE {t['rmse']:.3e}, d1 {t['rmse_d1']:.3e}, d2 {t['rmse_d2']:.3e}; run in {out}")


if __name__ == "__main__":
    main()
