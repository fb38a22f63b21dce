"""`aeflow latent map|manifold|traverse|interpolate`: the latent space of any bottleneck model (the family's,
the level VAEs, the music VAEs), drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.common import _run_flow
from flows.progress import out

app = typer.Typer(help="Latent spaces of the family, level and music models: maps, manifolds, traversals, "
                       "interpolations (PNG + report.json).", no_args_is_help=True)
MODEL_HELP = "A bottleneck model: folder, shipped name (mario-vae, music-melody-2bar, ...) or unique prefix."


def _units(text: str | None) -> list[int] | None:
    """"0,1,2" -> [0, 1, 2]: latent units count from 0."""
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = [-1]
    if not values or min(values) < 0:
        raise typer.BadParameter(f"{text!r}: unit numbers from 0 separated by commas, e.g. 0,1,2", param_hint="--dims")
    return values


def _done(report: dict, out_dir: Path) -> None:
    out.print(f"{report['png']} in {out_dir} ({Path(report['model']).name}); report: {out_dir / 'report.json'}",
              soft_wrap=True)


@app.command("map")
def latent_map(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out_dir: Path = typer.Argument(..., help="Folder for map.png and report.json."),
    method: str = typer.Option("auto", "--method", help="auto (direct for a 2-D code, else UMAP when umap-learn is installed, else t-SNE), direct, pca, tsne, umap."),
    color_by: Optional[str] = typer.Option(None, "--color-by", help="label (family), enemies / pipes / gaps (Mario), key / mode (music)."),
    n: int = typer.Option(2000, "--n", min=10, help="Held-out items to encode."),
    seed: int = typer.Option(0, "--seed"),
):
    """The codes of held-out items in 2-D, coloured by label, with a legend."""
    from flows.latent import METHODS
    from flows.pipelines import latent_map_flow

    if method not in METHODS:
        raise typer.BadParameter(f"{method}: one of {', '.join(METHODS)}", param_hint="--method")
    report = _run_flow(latent_map_flow, model=model, out_dir=str(out_dir), method=method, color_by=color_by, n=n,
                       seed=seed)
    _done(report, out_dir)
    out.print(f"  {report['items']} items, {report['latent']}-D codes drawn by {report['method']}"
              + (f"; 5-NN accuracy of the label on the picture: {report['knn5_2d']:.3f}" if "knn5_2d" in report else ""))


@app.command("manifold")
def latent_manifold(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out_dir: Path = typer.Argument(..., help="Folder for manifold.png and report.json."),
    n: int = typer.Option(15, "--n", min=2, max=40, help="Lattice points per side."),
    dims: Optional[str] = typer.Option(None, "--dims", help="The two units to sweep, e.g. 0,1 (default: a 2-D code's own, else the two the decoder uses most)."),
    label: Optional[int] = typer.Option(None, "--label", min=0, help="cvae: the condition to decode with."),
    temperature: float = typer.Option(0.0, "--temperature", min=0, help="0: the most likely output; 1: drawn as the model was trained."),
):
    """Items decoded from a regular lattice over two latent units."""
    from flows.pipelines import latent_manifold_flow

    pair = _units(dims)
    if pair is not None and len(pair) != 2:
        raise typer.BadParameter(f"{dims}: two units, e.g. 0,1", param_hint="--dims")
    report = _run_flow(latent_manifold_flow, model=model, out_dir=str(out_dir), n=n, label=label,
                       temperature=temperature, dims=tuple(pair) if pair else None)
    _done(report, out_dir)


@app.command("traverse")
def latent_traverse(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out_dir: Path = typer.Argument(..., help="Folder for traverse.png and report.json."),
    dims: Optional[str] = typer.Option(None, "--dims", help="Units, one row each, e.g. 0,1,2 (default: the first 8)."),
    spread: float = typer.Option(3.0, "--range", min=0.1, max=10, help="Each unit goes from -RANGE to +RANGE standard deviations."),
    steps: int = typer.Option(9, "--steps", min=2, max=25, help="Values per unit."),
    label: Optional[int] = typer.Option(None, "--label", min=0, help="cvae: the condition to decode with."),
    temperature: float = typer.Option(0.0, "--temperature", min=0, help="0: the most likely output."),
):
    """One unit at a time swept, the others held: what each unit does."""
    from flows.pipelines import latent_traverse_flow

    report = _run_flow(latent_traverse_flow, model=model, out_dir=str(out_dir), dims=_units(dims),
                       spread=spread, steps=steps, label=label, temperature=temperature)
    _done(report, out_dir)


@app.command("interpolate")
def latent_interpolate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    a: str = typer.Argument(..., help="Family: an image file or a held-out item number; levels: a level file; music: a MIDI file."),
    b: str = typer.Argument(..., help="The other end, like A."),
    out_dir: Path = typer.Argument(..., help="Folder for the steps and report.json."),
    steps: int = typer.Option(10, "--steps", min=2, max=64),
    slerp: Optional[bool] = typer.Option(None, "--slerp/--lerp", help="Along the great circle (keeps a VAE's codes at prior-typical norms) or the straight line (family default: lerp; levels and music: slerp)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0, help="0: the most likely output (the default)."),
    seed: int = typer.Option(0, "--seed"),
):
    """Decode the path between the codes of A and B."""
    from flows.pipelines import latent_interpolate_flow

    report = _run_flow(latent_interpolate_flow, model=model, a=a, b=b, out_dir=str(out_dir), steps=steps,
                       spherical=slerp, temperature=temperature, seed=seed)
    out.print(f"{steps} steps from A to B in {out_dir} ({Path(report['model']).name}); report: "
              f"{out_dir / 'report.json'}", soft_wrap=True)
