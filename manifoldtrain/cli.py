"""The ``manifoldtrain`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import attrs

from manifoldtrain._settings import settings_of
from manifoldtrain.records import strict_json
from manifoldtrain._validation import DTYPES
from manifoldtrain.registry import MANIFOLDS


def _option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type, group_title: str, *,
                           prefix: str = "") -> dict[str, str]:
    """Add one ``--option`` per setting of a settings class (:func:`~manifoldtrain._settings.settings_of`:
    an attrs class's fields, or a plain class's keyword arguments) whose default is a number, a
    string, a bool or a tuple of them (defaults: the class's own).

    With a ``prefix`` (e.g. ``"manifold"``), the values are kept apart from the command's own
    options (read them with :func:`settings_from_arguments` and the same prefix), and a setting
    whose ``--name`` the command already has is offered as ``--PREFIX-name`` instead.

    Returns ``{setting: option}``, the options added (for :func:`settings_from_arguments`'s messages)."""
    settings = settings_of(cls)
    options: dict[str, str] = {}
    if not settings:
        return options
    group = parser.add_argument_group(group_title)

    def add(name: str, **kwargs) -> None:
        try:
            group.add_argument(_option_name(name), **kwargs)
            options[name] = _option_name(name)
        except argparse.ArgumentError:  # the command has an option of that name already
            if not prefix:
                raise
            group.add_argument(_option_name(f"{prefix}_{name}"), **kwargs)
            options[name] = _option_name(f"{prefix}_{name}")

    for field in settings:
        default = field.default
        dest = f"{prefix}__{field.name}" if prefix else field.name
        if isinstance(default, tuple) and default:
            # Tuples of floats are fixed-size settings (colours, angles) unless the field's
            # metadata says {"nargs": "+"}; tuples of ints or str are lists.
            kind = type(default[0])
            add(field.name, dest=dest, type=kind, nargs=field.metadata.get("nargs", len(default) if kind is float else "+"),
                metavar="X", default=None, help=f"default: {' '.join(str(v) for v in default)}")
        elif isinstance(default, bool):
            add(field.name, dest=dest, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, (int, float)) or field.annotation in ("float", "int", "float | None"):
            add(field.name, dest=dest, type=type(default), default=None, metavar=field.name.upper(),
                help=f"default: {default:g}")
        elif isinstance(default, str):
            add(field.name, dest=dest, default=None, metavar=field.name.upper(), help=f"default: {default}")
    return options


def settings_from_arguments(cls: type, args: argparse.Namespace, *, prefix: str = "",
                            options: dict[str, str] | None = None):
    """Build ``cls`` from the options given on the command line (the others keep their defaults).
    An error that names a setting (``sigma: expected ...``) names its option instead
    (``--sigma: expected ...``; ``options``: :func:`add_settings_arguments`'s answer, where
    an option is not named after its setting)."""
    try:
        return cls(**given_settings(cls, args, prefix=prefix))
    except (TypeError, ValueError) as err:
        name, sep, rest = str(err).partition(": ")
        if not sep or not name.isidentifier() or name not in {s.name for s in settings_of(cls)}:
            raise
        raise type(err)(f"{(options or {}).get(name, _option_name(name))}: {rest}") from None


def given_settings(cls: type, args: argparse.Namespace, *, prefix: str = "") -> dict:
    """``{name: value}`` of the settings of ``cls`` given on the command line
    (:func:`add_settings_arguments` with the same ``prefix``)."""
    given = {}
    for field in settings_of(cls):
        value = getattr(args, f"{prefix}__{field.name}" if prefix else field.name, None)
        if value is not None:
            given[field.name] = tuple(value) if isinstance(value, list) else value
    return given


def _plugin_manifolds(argv: Sequence[str]) -> dict[str, type]:
    """Manifolds named ``package.module:ClassName`` right after ``show`` or ``generate``."""
    found = {}
    for k, token in enumerate(argv[:-1]):
        name = argv[k + 1]
        if token in ("show", "generate") and ":" in name and not name.startswith("-"):
            found[name] = MANIFOLDS.get(name)  # a clear error if it cannot be imported
    return found


def _command_manifold(argv: Sequence[str]) -> type | None:
    """The class of ``--manifold NAME`` (or ``--manifold=NAME``) of ``demo`` or ``robustness``,
    whose settings become options of the command; None where none is given (the cube)."""
    if not argv or argv[0] not in ("demo", "robustness"):
        return None
    for k, token in enumerate(argv):
        if token == "--":
            break
        if token == "--manifold" and k + 1 < len(argv):
            name = argv[k + 1]
        elif token.startswith("--manifold="):
            name = token.partition("=")[2]
        else:
            continue
        try:
            return MANIFOLDS.get(name)
        except (TypeError, ValueError) as err:
            raise type(err)(f"--manifold: {str(err).removeprefix('kind: ')}") from None
    return None


def _add_compute_options(p: argparse.ArgumentParser, *, fit_threads: bool = True) -> None:
    """``--device`` and ``--threads``, on every command that computes (see :func:`_apply_compute_options`).
    Without ``--threads``, a command with ``fit_threads`` runs on the cores that other work leaves
    idle (:func:`_idle_core_threads`); the demo does that itself, with its busy-machine note."""
    group = p.add_argument_group("where to compute")
    group.add_argument("--device", default=None, metavar="DEVICE",
                       help="cpu (the default), cuda or cuda:N; an error if CUDA is not available")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads for torch (torch.set_num_threads; default: torch's, fewer while other work "
                            "keeps some cores busy)")
    p.set_defaults(fit_threads=fit_threads)


def _may_fit_threads(args: argparse.Namespace) -> bool:
    """Whether a command may choose torch's threads: nobody chose them (``--threads``,
    ``OMP_NUM_THREADS``) and torchrun did not start it (its processes are each other's other work)."""
    return (args.threads is None and not os.environ.get("OMP_NUM_THREADS")
            and os.environ.get("WORLD_SIZE", "1") in ("", "1"))


@contextlib.contextmanager
def _idle_core_threads(args: argparse.Namespace):
    """Run a command on the cores that other work leaves idle (:func:`manifoldtrain._threads.idle_core_threads`,
    a note on stderr when torch gets fewer threads) where :func:`_may_fit_threads`, unless the
    command computes nothing or fits them itself (the demo)."""
    if not getattr(args, "fit_threads", False) or not _may_fit_threads(args):
        yield
        return
    from manifoldtrain import _threads

    with _threads.idle_core_threads(lambda text: print(f"manifoldtrain {args.command}: {text}", file=sys.stderr)):
        yield


def _apply_compute_options(args: argparse.Namespace):
    """Check ``--device`` (returned as a torch.device, or None if not given) and set ``--threads``."""
    from manifoldtrain._validation import check_int
    from manifoldtrain.devices import check_device

    if args.threads is not None:
        check_int("--threads", args.threads, minimum=1)
    device = check_device(args.device, "--device") if args.device is not None else None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    return device


class ExactParser(argparse.ArgumentParser):
    """An argument parser that takes long options only as written in full. argparse's default
    accepts any unambiguous prefix, so ``--width 64`` silently set ``--widths``, and a mistyped
    option or another command's could set one that the user did not mean. Subcommands' parsers
    are of this class too (``add_subparsers`` makes parsers of its parser's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _build_parser(plugins: dict[str, type] | None = None, command_manifold: type | None = None) -> argparse.ArgumentParser:
    from manifoldtrain import __version__

    parser = ExactParser(
        prog="manifoldtrain",
        description="Train networks on the derivatives of a computable data manifold.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = sub.add_parser("show", help="draw a sample of a manifold with its derivative images")
    show_sub = show.add_subparsers(dest="manifold", required=True, metavar="MANIFOLD",
                                   description="a registered name, or package.module:ClassName of your own")
    manifolds = {name: MANIFOLDS.get(name) for name in MANIFOLDS.names} | dict(plugins or {})
    for name, cls in manifolds.items():
        p = show_sub.add_parser(name, help=f"the {cls.__name__} manifold")
        p.add_argument("--out", required=True, help="image file to write (format from the suffix, e.g. .png, .pdf)")
        p.add_argument("--seed", type=int, default=0, help="seed of the sample drawn (default 0)")
        p.add_argument("--second-order", action="store_true", help="also draw the second-derivative images")
        p.add_argument("--force", action="store_true", help="replace --out if it exists")
        add_settings_arguments(p, cls, f"{cls.__name__} settings")
        p.set_defaults(handler=_cmd_show, manifold_class=cls)
    command_manifold = command_manifold or MANIFOLDS.get("cube")
    _add_demo(sub, command_manifold)
    _add_generate(sub, manifolds)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_robustness(sub, command_manifold)
    return parser


def _add_demo(sub, manifold: type) -> None:
    from manifoldtrain.demo import DemoConfig

    p = sub.add_parser("demo", help="train value, first- and second-order networks on a manifold (default: the cube) and compare")
    p.add_argument("--out", default="demo", help="output directory (default ./demo): new, empty, or a demo's")
    p.add_argument("--force", action="store_true", help="write into --out even if it holds other files")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (seconds, not minutes)")
    add_settings_arguments(p, DemoConfig, "demo settings")
    _add_compute_options(p, fit_threads=False)
    _add_manifold_settings(p, manifold)
    p.set_defaults(handler=_cmd_demo)


def _add_manifold_settings(p: argparse.ArgumentParser, manifold: type) -> None:
    """The settings of the command's ``--manifold`` (the default's where it is not given) as options."""
    options = add_settings_arguments(p, manifold, f"{manifold.__name__} settings (of --manifold)", prefix="manifold")
    p.set_defaults(manifold_class=manifold, manifold_options=options)


def _with_manifold_settings(config, args: argparse.Namespace):
    """``config`` (a DemoConfig or SuiteConfig) with a manifold built from the settings given as
    options, where any are; unchanged otherwise (the manifold named, with its defaults)."""
    if not given_settings(args.manifold_class, args, prefix="manifold"):
        return config
    manifold = settings_from_arguments(args.manifold_class, args, prefix="manifold", options=args.manifold_options)
    return attrs.evolve(config, manifold=manifold)


def _cmd_demo(args: argparse.Namespace) -> int:
    from manifoldtrain.demo import DemoConfig, run_demo
    from manifoldtrain.experiment import using_device

    device = _apply_compute_options(args)
    if args.quick:
        for name, value in (("n_train", 64), ("n_test", 32), ("hidden", [16, 16]), ("seconds_per_run", 2.0)):
            if getattr(args, name) is None:
                setattr(args, name, value)
    from manifoldtrain._io import output_folder

    config = _with_manifold_settings(settings_from_arguments(DemoConfig, args), args)
    with output_folder(args.out, "demo", force=args.force, argument="--out"):  # locked while the demo runs
        with using_device(device):  # the runs' models and training data; the data are drawn on the CPU
            run_demo(args.out, config, force=args.force, fit_threads=_may_fit_threads(args))
    return 0


def _add_generate(sub, manifolds: dict[str, type]) -> None:
    p = sub.add_parser(
        "generate", help="generate a cache of jets, in shards (see manifoldtrain.data for the format)",
        usage="manifoldtrain generate [-h] MANIFOLD --n N --out DIR [options]",
        description="Generate a sharded cache of jets, in parallel processes (--workers). Stopped at any moment, the "
                    "same command continues it: finished shards are kept, only the others are computed.",
        epilog="The options (--n, --out, --seed, --order, --dtype, --shard-size, --workers and the manifold's "
               "settings) follow the manifold's name: see `manifoldtrain generate cube --help`. Train from the cache "
               "with `manifoldtrain train --data DIR`, or data.path = DIR in the config (source = \"shards\" reads "
               "it batch by batch, for data larger than memory).",
    )
    gsub = p.add_subparsers(dest="manifold", required=True, metavar="MANIFOLD",
                            description="a registered name, or package.module:ClassName of your own")
    for name, cls in manifolds.items():
        q = gsub.add_parser(name, help=f"jets of the {cls.__name__} manifold")
        q.add_argument("--n", type=int, required=True, help="number of samples")
        q.add_argument("--out", required=True, help="cache directory to write: new, empty, or a jet cache (replaced; "
                                                   "one of the same settings is checked and completed)")
        q.add_argument("--seed", type=int, default=1,
                       help="seed of the points (default 1: not the draw of a training run's default data.seed 0)")
        q.add_argument("--order", type=int, default=2, choices=(0, 1, 2), help="jet order (default 2)")
        q.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="storage dtype (default float32)")
        q.add_argument("--shard-size", type=int, default=None, metavar="N",
                       help="samples per shard (default 1024: about 190 MB of order-2 cube jets in float32)")
        q.add_argument("--workers", type=int, default=1, metavar="N",
                       help="processes computing shards in parallel (default 1); they share the CPU threads")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_settings_arguments(q, cls, f"{cls.__name__} settings")
        _add_compute_options(q)
        q.set_defaults(handler=_cmd_generate, manifold_class=cls)


def _cmd_generate(args: argparse.Namespace) -> int:
    from manifoldtrain._validation import check_int, dtype_from_name
    from manifoldtrain.data import DEFAULT_SHARD_SIZE, check_cache_target, generate_shards

    device = _apply_compute_options(args)
    manifold = settings_from_arguments(args.manifold_class, args)
    from manifoldtrain.testing import verify_manifold

    verify_manifold(manifold, "MANIFOLD")  # a user's manifold keeps its contract: before any shard
    dtype = dtype_from_name("--dtype", args.dtype)
    check_int("n", args.n, minimum=1)
    shard_size = check_int("--shard-size", args.shard_size, minimum=1) if args.shard_size is not None \
        else DEFAULT_SHARD_SIZE
    workers = check_int("--workers", args.workers, minimum=1)
    check_cache_target(args.out, argument="--out")  # before the work
    try:
        report = generate_shards(manifold, args.n, args.out, seed=args.seed, order=args.order, dtype=dtype,
                                 shard_size=shard_size, workers=workers, progress=not args.no_progress, device=device)
    except BlockingIOError as err:  # another generation into --out is running
        from manifoldtrain.data.format import renamed

        raise renamed(err, "--out") from None
    shards = f"{report.n_shards} shard{'s' if report.n_shards != 1 else ''}"
    if not report.written:
        print(f"the cache at {args.out} is complete already: {report.n} samples of order {args.order} in {shards} "
              f"(fingerprint {report.fingerprint[:12]})")
        return 0
    count = len(report.kept)
    kept = (f"; kept {count} intact shard{'s' if count != 1 else ''} of an earlier, unfinished or damaged "
            "generation") if count else ""
    print(f"wrote {report.n} samples of order {args.order} to {args.out} in {shards}{kept} "
          f"(fingerprint {report.fingerprint[:12]})")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train from a TOML config (see manifoldtrain.config)",
        description="Train from a TOML config. Under torchrun (torchrun --nproc_per_node=N $(which manifoldtrain) "
                    "train ...) the N processes train one model together, data-parallel (batch_size is the global "
                    "batch; gloo on the CPU, nccl with --device cuda); rank 0 writes --out.",
        epilog="Where the training batches come from is the config's data.source: \"memory\" (the default: the data "
               "set, or the cache of --data, in memory), \"shards\" (a cache from `manifoldtrain generate` read batch "
               "by batch: data larger than memory) or \"on-the-fly\" (jets computed batch by batch, new points every "
               "epoch or a fixed pool); see examples/*.toml. Stopped (Ctrl-C, a lost machine), the same command "
               "continues from the last checkpoint.",
    )
    p.add_argument("--config", required=True, help="TOML file")
    p.add_argument("--out", required=True, help="run directory (new, empty, or a run's): config, checkpoint, results")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a checkpoint")
    p.add_argument("--force", action="store_true", help="write into --out even if it holds other files")
    p.add_argument("--data", default=None, help="train on this jet cache from 'generate' (the config's data.path)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="the run's seed: sets model_seed (initial weights), train.seed (batch order, random "
                        "directions, validation samples) and, unless the data come from a cache (--data, data.path), "
                        "data.seed (the points drawn); the train/test split (data.split_seed) is kept")
    _add_compute_options(p)
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from manifoldtrain._io import LOCK, check_not_input, claim_output_folder, release_if_unused, unlock_path
    from manifoldtrain._validation import check_int
    from manifoldtrain.config import load_config
    from manifoldtrain.devices import check_device
    from manifoldtrain.experiment import RUN_OUTPUTS, run_experiment

    device = _apply_compute_options(args)
    try:
        config = load_config(args.config)
    except (FileNotFoundError, ValueError, TypeError) as err:  # name the option, as the user typed it
        named = f"--config {args.config}: {err}"
        kind = type(err) if type(err) in (FileNotFoundError, ValueError, TypeError) else ValueError
        raise kind(named) from None
    if args.data is not None:
        from manifoldtrain.data.format import read_meta, renamed

        try:  # named as the option: the config's data.path is what it replaces
            read_meta(Path(args.data))
        except (FileNotFoundError, ValueError) as err:
            raise renamed(err, "--data") from None
        config = attrs.evolve(config, data=attrs.evolve(config.data, path=args.data))
    if args.seed is not None:
        seed = check_int("--seed", args.seed, minimum=0)
        data = config.data if config.data.path is not None else attrs.evolve(config.data, seed=seed)
        config = attrs.evolve(config, model_seed=seed, train=attrs.evolve(config.train, seed=seed), data=data)
    if device is None and config.device is not None:  # --device wins over the config's device
        device = check_device(config.device, f"device (in --config {args.config})")
    from manifoldtrain.distributed import DistributedContext

    # Under torchrun: join the other processes (after the checks above, which fail alike everywhere).
    ctx = DistributedContext.from_environment(device, argument="--device")

    def claim() -> None:  # rank 0 only; its error, if any, stops every process
        for name in RUN_OUTPUTS:  # never over its own input
            check_not_input(Path(args.out) / name, {"--config": args.config})
        claim_output_folder(args.out, "run", force=args.force, argument="--out")

    try:
        with ctx.failure_guard(), (release_if_unused(args.out) if ctx.is_main else contextlib.nullcontext()):
            try:
                ctx.run_on_main(claim)  # and its lock, held until the run ends
                res = run_experiment(config, args.out, resume=not args.no_resume, force=args.force,
                                     device=ctx.device if ctx.is_distributed else device, distributed=ctx)
            finally:
                if ctx.is_main:
                    unlock_path(Path(args.out).absolute() / LOCK)
    except (FileNotFoundError, ValueError) as err:
        if args.data is not None and str(err).startswith("data.path: "):  # named as the option the user typed
            raise renamed(err, "--data", "data.path") from None
        raise
    finally:
        ctx.shutdown()
    if not ctx.is_main:
        return 0
    summary = {"objective": res["objective"], "test": res["test"], "epochs": res["epochs"], "seconds": res["seconds"],
               "wall_seconds": res["wall_seconds"]}
    if res["best_epoch"] is not None:
        summary.update(checkpoint=res["checkpoint"], best_epoch=res["best_epoch"], stopped_early=res["stopped_early"])
    if ctx.is_distributed:
        summary.update(world_size=ctx.world_size)
    print(strict_json(summary), end="")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="clean and derivative RMSE of a trained run on a jet cache")
    p.add_argument("--run", required=True, help="run directory (its best.pt where it has one, else its checkpoint.pt), "
                                                "or a checkpoint file, written by 'train' or 'demo'")
    p.add_argument("--data", required=True, help="jet cache directory written by 'generate'")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--force", action="store_true", help="replace --json if it exists")
    _add_compute_options(p)
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from manifoldtrain._io import write_text_atomic
    from manifoldtrain.data import load_jets
    from manifoldtrain.data.format import renamed
    from manifoldtrain.experiment import evaluate_checkpoint

    device = _apply_compute_options(args)
    if args.json is not None:
        _check_output_file("--json", args.json, "a JSON file", force=args.force)
        _check_json_not_input(args.json, {"--run": args.run, "--data": args.data})

    try:
        data = load_jets(args.data)
    except (FileNotFoundError, ValueError) as err:
        raise renamed(err, "--data") from None
    try:
        metrics = evaluate_checkpoint(args.run, data, device=device).to_dict()
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--run {args.run}: {err}") from None
    text = strict_json(metrics)
    print(text, end="")
    if args.json:
        write_text_atomic(args.json, text)
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a trained network as a torch.export program (runs without manifoldtrain)")
    p.add_argument("--run", required=True, help="run directory (its best.pt where it has one, else its checkpoint.pt), "
                                                "or a checkpoint file, written by 'train' or 'demo'")
    p.add_argument("--out", required=True, help="file to write (e.g. model.pt2): new, or an earlier export (replaced)")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not an earlier export")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from manifoldtrain.export import export_info, export_run

    def named(err: Exception) -> Exception:  # the library names its arguments run / out; here they are options
        text = str(err)
        for name in ("run", "out"):
            if text.startswith(f"{name}: "):
                return type(err)(f"--{text}")
        return type(err)(f"--run {args.run}: {text}")

    try:
        path = export_run(args.run, args.out, force=args.force)
    except (FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError, ValueError) as err:
        raise named(err) from None
    info = export_info(path)
    print(f"wrote {path}: inputs [n, {', '.join(map(str, info['input_shape']))}] {info['dtype']} -> "
          f"[n, {', '.join(map(str, info['target_shape']))}], from {info['checkpoint']} (epoch {info['epoch']})")
    return 0


def _add_robustness(sub, manifold: type) -> None:
    from manifoldtrain.robustness.suite import SuiteConfig

    p = sub.add_parser(
        "robustness",
        help="compare value, invariance and oracle training (the quick robustness benchmark), or score a trained run",
        description="Without --run: train value, invariance (a sweep of strengths) and oracle networks on the same data "
                    "and budget and compare their accuracy and robustness (about 7 minutes on 2 cores with the defaults); "
                    "writes OUT/results.json, OUT/tradeoff.png and OUT/worst_case.png. With --run: every robustness "
                    "figure of one trained run on its test set, written to RUN/robustness.json and RUN/worst_case.png.",
    )
    p.add_argument("--out", default="robustness", help="output directory of the comparison (default ./robustness)")
    p.add_argument("--force", action="store_true", help="write into --out (or replace --json) even if it holds other files")
    p.add_argument("--run", default=None, help="score this trained run folder instead of running the comparison")
    p.add_argument("--json", default=None, help="with --run: also write the figures to this JSON file")
    group = p.add_argument_group("comparison settings (with --run, the evaluation ones apply)")
    for field in attrs.fields(SuiteConfig):
        default = field.default
        if isinstance(default, tuple):
            group.add_argument(_option_name(field.name), type=type(default[0]), nargs="+", default=None, metavar="X",
                               help=f"default: {' '.join(str(v) for v in default)}")
        elif isinstance(default, bool):
            group.add_argument(_option_name(field.name), action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, (int, float)):
            group.add_argument(_option_name(field.name), type=type(default), default=None, help=f"default: {default:g}")
        else:
            group.add_argument(_option_name(field.name), default=None, help=f"default: {default}")
    _add_compute_options(p)
    _add_manifold_settings(p, manifold)
    p.set_defaults(handler=_cmd_robustness)


def _cmd_robustness(args: argparse.Namespace) -> int:
    from manifoldtrain.robustness.suite import SuiteConfig, run_suite

    from manifoldtrain.experiment import using_device

    device = _apply_compute_options(args)
    if args.run is not None:
        _refuse_comparison_options(args)
    config = _with_manifold_settings(settings_from_arguments(SuiteConfig, args), args)
    if args.run is None:
        if args.json is not None:
            raise ValueError("--json: only with --run (the comparison writes OUT/results.json)")
        from manifoldtrain._io import output_folder

        with output_folder(args.out, "robustness", force=args.force, argument="--out"):  # named as the option
            with using_device(device):
                run_suite(args.out, config, force=args.force)
        return 0
    return _robustness_of_run(args, config, device)


def _refuse_comparison_options(args: argparse.Namespace) -> None:
    """With ``--run``, refuse the options that only describe the comparison (the run's own
    manifold, data and network are scored), rather than ignore them."""
    from manifoldtrain.robustness.suite import EVALUATION_SETTINGS, SuiteConfig

    scoring = (*EVALUATION_SETTINGS, "progress")  # how the run is scored, and shown
    given = [_option_name(f.name) for f in attrs.fields(SuiteConfig)
             if f.name not in scoring and getattr(args, f.name, None) is not None]
    given += [args.manifold_options[name] for name in given_settings(args.manifold_class, args, prefix="manifold")]
    if given:
        raise ValueError(f"{', '.join(given)}: only without --run: they set up the comparison's own runs, while --run "
                         f"scores {args.run} on its own manifold, data and network (with --run, these apply: "
                         f"{', '.join(_option_name(n) for n in scoring)})")


def _robustness_of_run(args: argparse.Namespace, config, device) -> int:
    from manifoldtrain._io import LOCK, locked, write_text_atomic
    from manifoldtrain.plotting import plot_worst_case
    from manifoldtrain.robustness.suite import evaluate_run

    run = Path(args.run)
    if args.json is not None:
        _check_output_file("--json", args.json, "a JSON file", force=args.force)
        _check_json_not_input(args.json, {"--run": args.run}, outputs=("robustness.json",))
    # It writes into the run folder: not while another command (a train resuming there) works in it.
    with locked(run / LOCK, "--run", args.run) if run.is_dir() else contextlib.nullcontext():
        try:
            report = evaluate_run(run, noise_levels=config.noise_levels, budgets=config.budgets,
                                  eval_samples=config.eval_samples, attack_samples=config.attack_samples,
                                  attack_steps=config.attack_steps, seed=config.seed, progress=config.progress,
                                  device=device)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"--run {args.run}: {err}") from None
        worst = report.pop("worst_case")
        text = strict_json(report)
        print(text, end="")
        write_text_atomic(run / "robustness.json", text)
        budget = max(config.budgets) if config.budgets else 1.0
        plot_worst_case(worst["input"], [(run.name, worst["amplification"], worst["direction"])], budget, run / "worst_case.png")
        if args.json is not None:
            write_text_atomic(args.json, text)
    print(f"wrote {run / 'robustness.json'} and {run / 'worst_case.png'}" + (f" and {args.json}" if args.json else ""))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from manifoldtrain.plotting import show

    _check_output_file("--out", args.out, "an image file", force=args.force)
    _check_image_format("--out", args.out)
    manifold = settings_from_arguments(args.manifold_class, args)
    show(manifold, args.out, seed=args.seed, second_order=args.second_order)
    print(f"wrote {args.out}")
    return 0


def _check_output_file(argument: str, path: str, what: str, *, force: bool) -> None:
    """Refuse, before any work, to write ``path`` over a folder, or over a file unless ``force``."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{argument}: {path} is a folder; give the name of {what} to write")
    if target.exists() and not force:
        raise FileExistsError(f"{argument}: {path} exists; choose another file, or pass --force to replace it")


def _check_json_not_input(json_path: str, inputs: dict[str, str | None], outputs: Sequence[str] = ()) -> None:
    """Refuse ``--json`` where it would replace what the command reads: a file given as one of
    ``inputs`` (by option name), or a file inside a folder given as one (but for the names in
    ``outputs``, which the command writes into that folder itself)."""
    target = Path(os.path.abspath(json_path))
    if not target.exists():
        return
    for argument, given in inputs.items():
        if given is None or not Path(given).exists():
            continue
        source = Path(os.path.abspath(given))
        if source.is_dir():
            inside = target.parent.exists() and os.path.samefile(target.parent, source)
            if inside and target.name not in outputs:
                raise FileExistsError(f"--json: {json_path} is a file of {argument} {given}, which this command "
                                      "reads and does not write; choose another file")
        elif os.path.samefile(target, source):
            raise FileExistsError(f"--json: {json_path} is {argument}, which this command reads; choose another "
                                  "file")


def _check_image_format(argument: str, path: str) -> None:
    """Refuse an image file name whose suffix matplotlib cannot write (none means png)."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise ValueError(f"{argument}: {path}: cannot write images of format {suffix!r}; end the name with one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")


#: The package's folder: warnings raised from files under it are the library's own.
_PACKAGE = Path(__file__).resolve().parent


@contextlib.contextmanager
def _plain_warnings(command: str):
    """The library's own warnings as one line, ``manifoldtrain COMMAND: warning: MESSAGE``,
    instead of Python's ``file:line: UserWarning: MESSAGE`` with a line of our source; other
    warnings (torch's, a plug-in's) keep Python's form, which says where they come from. Only
    the text changes (``warnings.formatwarning``): filters and recorders see every warning."""
    formatted = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        try:
            ours = Path(filename).resolve().is_relative_to(_PACKAGE)
        except (OSError, ValueError):
            ours = False
        if ours and issubclass(category, UserWarning):
            return f"manifoldtrain{command}: warning: {message}\n"
        return formatted(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = formatted


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors in arguments exit with 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = f" {argv[0]}" if argv and not argv[0].startswith("-") else ""
    with _plain_warnings(command):
        return _main(argv)


def _main(argv: list[str]) -> int:
    """:func:`main` with its warnings in words."""
    _current_folder_importable()
    try:
        plugins = _plugin_manifolds(argv)
        command_manifold = _command_manifold(argv)
    except (TypeError, ValueError) as err:
        command = f" {argv[0]}" if argv and argv[0] in ("demo", "robustness") else ""
        print(f"manifoldtrain{command}: error: {err}", file=sys.stderr)
        return 2
    parser = _build_parser(plugins, command_manifold)
    if argv[:1] in (["generate"], ["show"]) and len(argv) > 1 and argv[1].startswith("-") and argv[1] not in (
            "-h", "--help"):  # argparse would take the option's value for the manifold's name
        names = ", ".join(sorted(MANIFOLDS.names) + sorted(plugins or {}))
        parser.exit(2, f"manifoldtrain {argv[0]}: error: name the manifold first, then its options: manifoldtrain "
                       f"{argv[0]} MANIFOLD {argv[1]} ... (MANIFOLD: {names}, or package.module:ClassName of your "
                       "own)\n")
    args = parser.parse_args(argv)
    try:
        with _idle_core_threads(args):
            return args.handler(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as err:
        if not _first_process():  # rank 0 says it: an error every process raised alike, or one that
            return 2  # DistributedContext.failure_guard has reported as this rank's already
        parser.exit(2, f"manifoldtrain {args.command}: error: {err}\n")
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (under torchrun: from rank 0 only)
        if _first_process():
            print(f"manifoldtrain {args.command}: interrupted{_RESUME_HINTS.get(args.command, '')}", file=sys.stderr)
        return 130


def _current_folder_importable() -> None:
    """Let ``package.module:ClassName`` name a module in the current folder, as ``python -m`` would
    (a console script's path starts at its own folder). Appended: installed packages come first."""
    cwd = os.getcwd()
    if not any(entry in ("", ".", cwd) for entry in sys.path):
        sys.path.append(cwd)


def _first_process() -> bool:
    """Not one of torchrun's processes other than rank 0 (which print nothing of an error: once is enough)."""
    return os.environ.get("WORLD_SIZE", "1") in ("", "1") or os.environ.get("RANK", "0") == "0"


#: What rerunning a command after an interrupt does, for the line :func:`main` prints then.
_RESUME_HINTS = {
    "train": "; the same command continues the run from its last checkpoint (--no-resume starts over)",
    "demo": "; the same command continues it: finished runs are kept, a stopped one resumes from its checkpoint",
    "generate": "; the same command continues it: the finished shards are kept",
    "robustness": "; the same command continues it where it stopped",
}


if __name__ == "__main__":
    sys.exit(main())
