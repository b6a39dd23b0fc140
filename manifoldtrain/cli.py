"""The ``manifoldtrain`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import attrs

from manifoldtrain.manifolds import Cube

#: Manifolds the command line knows, by name.
MANIFOLDS = {"cube": Cube}


def _option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type, group_title: str) -> None:
    """Add one ``--option`` per field of an attrs settings class (defaults: the class's own)."""
    group = parser.add_argument_group(group_title)
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, tuple):
            group.add_argument(
                _option_name(field.name), type=float, nargs=len(default), metavar="X", default=None,
                help=f"default: {' '.join(f'{v:g}' for v in default)}",
            )
        elif isinstance(default, bool):
            group.add_argument(_option_name(field.name), action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, (int, float)):
            group.add_argument(_option_name(field.name), type=type(default), default=None, help=f"default: {default:g}")


def settings_from_arguments(cls: type, args: argparse.Namespace):
    """Build ``cls`` from the options given on the command line (the others keep their defaults)."""
    given = {}
    for field in attrs.fields(cls):
        value = getattr(args, field.name, None)
        if value is not None:
            given[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**given)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manifoldtrain",
        description="Train networks on the derivatives of a computable data manifold.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = sub.add_parser("show", help="draw a sample of a manifold with its derivative images")
    show_sub = show.add_subparsers(dest="manifold", required=True, metavar="MANIFOLD")
    for name, cls in MANIFOLDS.items():
        p = show_sub.add_parser(name, help=f"the {cls.__name__} manifold")
        p.add_argument("--out", required=True, help="image file to write (format from the suffix, e.g. .png, .pdf)")
        p.add_argument("--seed", type=int, default=0, help="seed of the sample drawn (default 0)")
        p.add_argument("--second-order", action="store_true", help="also draw the second-derivative images")
        add_settings_arguments(p, cls, f"{cls.__name__} settings")
        p.set_defaults(handler=_cmd_show, manifold_class=cls)
    return parser


def _cmd_show(args: argparse.Namespace) -> int:
    from manifoldtrain.plotting import show

    manifold = settings_from_arguments(args.manifold_class, args)
    show(manifold, args.out, seed=args.seed, second_order=args.second_order)
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors in arguments exit with 2)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.exit(2, f"manifoldtrain {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
