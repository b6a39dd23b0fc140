"""Figures of jets (matplotlib, no display needed)."""

from __future__ import annotations

import math
import os

import torch

from manifoldtrain._io import atomic_path
from manifoldtrain._validation import check_int
from manifoldtrain.jet import Jet, triu_pairs

__all__ = ["plot_image_jet", "save_figure", "show", "plot_history", "plot_tradeoff", "plot_worst_case"]


def plot_image_jet(
    jet: Jet,
    sample: int = 0,
    *,
    second_order: bool = False,
    coordinate_names: tuple[str, ...] | None = None,
    title: str | None = None,
):
    """Draw one sample's image with its first- (and optionally second-) derivative images.

    Parameters
    ----------
    jet : Jet
        An image jet: ``value [n, H, W]``, ``d1 [n, d, H, W]``, ``d2 [n, d(d+1)/2, H, W]``; or a
        multi-channel one, ``value [n, C, H, W]`` (e.g. ``C`` frames), drawn channel after
        channel.
    sample : int
        Which of the ``n`` samples to draw.
    second_order : bool
        Also draw the ``d(d+1)/2`` second-derivative images (needs a jet of order 2).
    coordinate_names : tuple of str, optional
        Names of the ``d`` coordinates for the panel titles (default ``0, 1, ...``).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One row with the image and the ``d`` first derivatives, then the second derivatives,
        each panel with its own colour bar (derivatives on a symmetric diverging scale); with
        ``C`` channels, these rows for each channel in turn, titles prefixed ``channel c:``.
    """
    from matplotlib.figure import Figure

    if not isinstance(jet, Jet) or len(jet.shape) not in (2, 3):
        shape = f"[n, {', '.join(map(str, jet.shape))}]" if isinstance(jet, Jet) else type(jet).__name__
        raise ValueError(f"jet: expected an image Jet with value of shape [n, H, W] or [n, C, H, W], got {shape}")
    check_int("sample", sample, minimum=0, maximum=len(jet) - 1)
    if jet.order < 1:
        raise ValueError("jet: expected a jet of order >= 1 (first derivatives to draw)")
    if second_order and jet.order < 2:
        raise ValueError("second_order: the jet has no second derivatives (order < 2)")
    d = jet.param_dim
    names = coordinate_names or tuple(str(i) for i in range(d))
    if len(names) != d:
        raise ValueError(f"coordinate_names: expected {d} names, got {len(names)}")
    cols = d + 1
    channels = [(None, ...)] if len(jet.shape) == 2 else [(f"channel {c}: ", c) for c in range(jet.shape[0])]
    panels = []  # (label, image, diverging, position): each channel starts a new row
    for prefix, c in channels:
        own = [("value", jet.value[sample][c], False)]
        own += [(f"d/d{names[i]}", jet.d1[sample, i][c], True) for i in range(d)]
        if second_order:
            i, j = triu_pairs(d)
            own += [(f"d2/d{names[a]}d{names[b]}", jet.d2[sample, k][c], True)
                    for k, (a, b) in enumerate(zip(i.tolist(), j.tolist()))]
        start = math.ceil((panels[-1][3] + 1) / cols) * cols if panels else 0
        panels += [((prefix or "") + label, img, div, start + k) for k, (label, img, div) in enumerate(own)]
    rows = panels[-1][3] // cols + 1
    fig = Figure(figsize=(2.3 * cols, 2.2 * rows + (0.4 if title else 0.0)), layout="constrained")
    for label, img, diverging, position in panels:
        ax = fig.add_subplot(rows, cols, position + 1)
        data = img.detach().to(torch.float64).cpu().numpy()
        if diverging:
            lim = float(abs(data).max()) or 1.0
            im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim)
        else:
            im = ax.imshow(data, cmap="gray")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically (format from the file's suffix)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)


def show(
    manifold,
    out: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    second_order: bool = False,
    points: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
):
    """Draw a sample of an image manifold with its derivative images (and save it to ``out``).

    Parameters
    ----------
    manifold : Manifold
        A manifold whose input is an image, ``input_shape`` ``(H, W)`` (e.g.
        :class:`~manifoldtrain.manifolds.Cube`) or ``(C, H, W)`` (``C`` channels, e.g. frames,
        drawn one after the other).
    out : path, optional
        Where to save the figure (atomically); format from the suffix.
    seed : int
        Seed of the sample drawn when ``points`` is not given.
    second_order : bool
        Also draw the second-derivative images.
    points : Tensor, optional
        ``[1, *point_shape]``: the point to draw instead of a random sample.
    dtype : torch.dtype
        Precision of the jets.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if len(manifold.input_shape) not in (2, 3):
        raise ValueError("manifold: expected an image manifold (input_shape (H, W) or (C, H, W)), got input_shape "
                         f"{tuple(manifold.input_shape)}")
    if points is None:
        check_int("seed", seed, minimum=0)
        points = manifold.sample(1, torch.Generator().manual_seed(seed), dtype=dtype)
    points = manifold.check_points(points)
    if len(points) != 1:
        raise ValueError(f"points: expected a single point [1, {', '.join(map(str, manifold.point_shape))}], got {list(points.shape)}")
    image, _ = manifold.jets(points, order=2 if second_order else 1)
    pose = ", ".join(f"{v:.3f}" for v in points[0].flatten().tolist())
    fig = plot_image_jet(
        image,
        second_order=second_order,
        coordinate_names=manifold.coordinate_names,
        title=f"{type(manifold).__name__} at ({pose})",
    )
    if out is not None:
        save_figure(fig, out)
    return fig


def plot_history(records: list[dict], path: str | os.PathLike, *, title: str = "") -> None:
    """Learning curves of one run: the training loss of every term, and every test metric the
    Trainer recorded (one panel each), against training seconds; written atomically to ``path``.

    ``records`` is :attr:`manifoldtrain.training.History.records`.
    """
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("records: no epochs to plot")
    seconds = [r["seconds"] for r in records]
    tested = [r for r in records if "test" in r]
    names = list(dict.fromkeys(k for r in tested for k, v in r["test"].items() if v is not None))
    panels = 1 + len(names)
    cols = min(panels, 3)
    fig = Figure(figsize=(4.2 * cols, 3.3 * math.ceil(panels / cols)), layout="constrained")
    ax = fig.add_subplot(math.ceil(panels / cols), cols, 1)
    for term in records[-1]["losses"]:
        ax.plot(seconds, [max(r["losses"].get(term, 0.0), 1e-30) for r in records], label=term)
    ax.set(xlabel="training seconds", ylabel="training loss (weighted)", yscale="log", title="training loss per term")
    ax.legend(fontsize=8)
    for k, name in enumerate(names, start=2):
        ax = fig.add_subplot(math.ceil(panels / cols), cols, k)
        pts = [(r["seconds"], r["test"][name]) for r in tested if r["test"].get(name) is not None]
        ax.plot(*zip(*pts), "-o", ms=3)
        positive = all(v > 0 for _, v in pts)
        ax.set(xlabel="training seconds", ylabel=name, yscale="log" if positive else "linear", title=f"test: {name}")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


_OBJECTIVE_COLORS = {"value": "tab:blue", "second": "tab:green", "invariance-noise": "tab:orange",
                     "invariance-jacobian": "tab:red", "invariance-adversarial": "tab:pink", "oracle-random": "tab:purple",
                     "oracle-hessian": "tab:brown"}


def plot_tradeoff(runs: list[dict], path: str | os.PathLike, *, title: str = "",
                  reference: float | None = None) -> None:
    """Clean test RMSE against worst-case amplification, one point per run (the robustness
    trade-off); the runs of one objective and width at several strengths joined in order of
    strength. ``runs`` are the
    entries of a robustness results file (``objective``, ``width``, ``strength``, ``test_rmse``,
    ``amplification``). ``reference``: the amplification of a perfectly invariant network
    (:func:`~manifoldtrain.robustness.invariant_amplification`), drawn as a vertical line.
    Written atomically to ``path``."""
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("runs: nothing to plot")
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    widths = sorted({r["width"] for r in runs})
    markers = dict(zip(widths, "os^Dv<>"))
    others = iter(["tab:olive", "tab:cyan", "tab:pink", "tab:gray", "black"] * len(runs))  # objectives of one's own
    colors = {}
    for r in runs:
        if r["objective"] not in colors:
            colors[r["objective"]] = _OBJECTIVE_COLORS.get(r["objective"]) or next(others)
    seen = set()
    for r in runs:
        name = r["objective"]
        label = name if name not in seen else None
        seen.add(name)
        ax.scatter(r["amplification"], r["test_rmse"], color=colors[name],
                   marker=markers[r["width"]], s=45, label=label, zorder=3)
        if r.get("strength") is not None:
            ax.annotate(f"{r['strength']:g}", (r["amplification"], r["test_rmse"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    for name in colors:
        for w in widths:
            line = sorted((r["strength"], r["amplification"], r["test_rmse"]) for r in runs
                          if r["objective"] == name and r["width"] == w and r.get("strength") is not None)
            if len(line) > 1:
                ax.plot([a for _, a, _ in line], [e for _, _, e in line], color=colors[name], lw=0.8, alpha=0.6)
    for w in widths:
        ax.scatter([], [], marker=markers[w], color="gray", label=f"width {w}")
    if reference is not None:
        ax.axvline(reference, color="gray", ls="--", lw=0.8, label="invariant network (N' = 0)")
    ax.set(xscale="log", yscale="log", xlabel="worst-case amplification  median ||E||_2  (lower: more robust)",
           ylabel="clean test RMSE  (lower: more accurate)", title=title or "accuracy against robustness")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_worst_case(image: torch.Tensor, panels: list[tuple[str, float, torch.Tensor]], budget: float,
                    path: str | os.PathLike) -> None:
    """The worst-case perturbation of each network next to the input it perturbs.

    ``image`` is one input (``[H, W]``, ``[C, H, W]`` or a vector); ``panels`` are ``(label,
    amplification, direction)`` with ``direction`` the unit worst-case perturbation
    (input-shaped). Each row shows the input, the perturbation scaled to the L2 ``budget`` and
    the perturbed input; the ``C`` channels of a multi-channel input side by side, left to
    right, on one colour scale. Written atomically to ``path``.
    """
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("panels: nothing to plot")
    img = image.detach().double().cpu()
    channels = f" (channels 0-{img.shape[0] - 1}, left to right)" if img.dim() == 3 else ""
    fig = Figure(figsize=(11, 3.3 * len(panels)), layout="constrained")
    for row, (label, amp, direction) in enumerate(panels):
        delta = budget * direction.detach().double().cpu()
        shown = [(img, "input" + channels, False), (delta, f"worst-case perturbation, |delta| = {budget:g}", True),
                 (img + delta, "perturbed input", False)]
        for col, (a, name, signed) in enumerate(shown):
            ax = fig.add_subplot(len(panels), 3, 3 * row + col + 1)
            if col == 0:
                ax.set_ylabel(f"{label}\n||E||_2 = {amp:.3g}", fontsize=9)
            if a.dim() == 3:  # channels side by side, a blank (NaN) column between them
                gap = torch.full((a.shape[1], 1), float("nan"), dtype=a.dtype)
                a = torch.cat([part for c in range(a.shape[0]) for part in ((gap,) if c else ()) + (a[c],)], dim=1)
            if a.dim() == 2:
                lim = float(a.nan_to_num(0.0).abs().max()) or 1.0
                im = ax.imshow(a.numpy(), cmap="RdBu_r" if signed else "gray", vmin=-lim if signed else None,
                               vmax=lim if signed else None)
                fig.colorbar(im, ax=ax, shrink=0.8)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.plot(a.reshape(-1).numpy())
            ax.set_title(f"{label}: {name}" if col == 1 else name, fontsize=9)
    save_figure(fig, path)
