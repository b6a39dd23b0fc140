"""Draw a sample of the paper's cube with its exact first and second derivative images.

Run: ``python examples/show_cube.py [--out cube_jets.png] [--seed 0]``
"""

from __future__ import annotations

import argparse

import torch

from manifoldtrain.manifolds import Cube
from manifoldtrain.plotting import show


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", default="cube_jets.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cube = Cube()  # the paper's cube, every constant at its default; each is an option, e.g. Cube(sigma=0.05)
    points = cube.sample(1, torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    image, target = cube.jets(points)
    print(f"pose {points[0].tolist()}")
    print(f"|x| <= {image.value.abs().max():.3f}, |x_i| <= {image.d1.abs().max():.1f}, |x_ij| <= {image.d2.abs().max():.1f}")
    print(f"target (3 corners, x y z each): {target.value[0].tolist()}")
    show(cube, args.out, points=points, second_order=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
