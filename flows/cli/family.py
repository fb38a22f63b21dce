"""`aeflow family train|sample|compare`: the autoencoder family on small image sets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.common import _ints, _run_flow, launch, nproc_option
from flows.progress import out

app = typer.Typer(help="The autoencoder family (ae, dae, contractive_ae, vae, cvae) on digits, MNIST, faces or "
                       "an image folder: train, sample, compare with PCA.", no_args_is_help=True)
FAMILY_KINDS = ("ae", "dae", "contractive_ae", "vae", "cvae")


def _family_data(data: str) -> str:
    if data not in ("digits", "mnist", "faces") and not Path(data).expanduser().is_dir():
        raise typer.BadParameter(f"{data}: digits, mnist, faces or an image folder (or a folder of MNIST IDX files)",
                                 param_hint="--data")
    return data


@app.command("train")
def family_train(
    kind: str = typer.Option("vae", "--kind", help="ae, dae (denoising), contractive_ae, vae (--beta > 1: a beta-VAE) or cvae (conditioned on the label)."),
    data: str = typer.Option("digits", "--data", help="digits (scikit-learn's 8x8, the default), mnist (IDX files in data/mnist, $AEFLOW_MNIST, or give their folder), faces (scikit-image lfw_subset) or an image folder."),
    latent: int = typer.Option(2, "--latent", min=1, help="Code size (2: the codes can be drawn directly)."),
    beta: Optional[float] = typer.Option(None, "--beta", min=0, help="vae/cvae: weight of the KL term (1 = the plain VAE; 4: a beta-VAE; too strong and the code collapses)."),
    body: str = typer.Option("mlp", "--body", help="mlp or conv."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Hidden sizes (mlp) or channels (conv), e.g. 512,256."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps (default per set: digits 6000, mnist 6000)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", min=0.01, help="A time budget instead of --steps."),
    size: int = typer.Option(28, "--size", min=4, help="An image folder's images are resized to SIZE x SIZE gray."),
    name: Optional[str] = typer.Option(None, "--name", help="The model folder's name instead of KIND-DATA."),
    seed: int = typer.Option(0, "--seed"),
    refresh: bool = typer.Option(False, "--refresh", help="Train again instead of using the cached model."),
    nproc: int = nproc_option(),
):
    """Train one member of the family; prints the model folder (usable by folder, name or unique prefix)."""
    if kind not in FAMILY_KINDS:
        raise typer.BadParameter(f"{kind}: one of {', '.join(FAMILY_KINDS)}", param_hint="--kind")
    if body not in ("mlp", "conv"):
        raise typer.BadParameter(f"{body}: mlp or conv", param_hint="--body")
    if beta is not None and kind not in ("vae", "cvae"):
        raise typer.BadParameter(f"only vae and cvae weigh a KL term, not {kind}", param_hint="--beta")
    if steps is not None and minutes is not None:
        raise typer.BadParameter("give --steps or --minutes, not both", param_hint="--minutes")
    _family_data(data)
    launch(nproc)                     # before the flows' import, which starts Prefect's API
    from flows.pipelines import family_train_flow

    trained = _run_flow(family_train_flow, kind=kind, data=data, latent=latent, beta=beta, body=body,
                        widths=_ints(widths), steps=steps, minutes=minutes, size=size, name=name, seed=seed,
                        refresh=refresh)
    folder, record = trained.folder, trained.manifest
    spec, m, d = record["config"]["model"], record["metrics"], record["data"]
    out.print(f"[bold]model[/] {folder}", soft_wrap=True)
    out.print(f"  {spec['kind']} on {d['train_windows']} {d['data']} images {tuple(spec['shape'])}, "
              f"z={spec['latent']}, {record['parameters']:,} parameters, {record['steps']} steps in {record['seconds']:.0f} s")
    out.print(f"  validation ({d['val_windows']} held-out): mse {m['val_mse']:.4f}, loss {m['val_loss']:.2f} nats per image"
              + (f", KL {m['val_kl']:.2f}" if "val_kl" in m else ""))
    out.print(f"  see it: aeflow latent map {folder.name} OUT_DIR" + (f"; aeflow family sample {folder.name}"
              f"{' --label 7' if spec['kind'] == 'cvae' else ''} OUT_DIR" if spec['kind'] in ('vae', 'cvae') else ""))


@app.command("sample")
def family_sample(
    model: str = typer.Argument(..., help="A vae or cvae: folder, name or unique prefix (see `aeflow models`)."),
    out_dir: Path = typer.Argument(..., help="Folder for samples[-labelL].png and report.json."),
    label: Optional[int] = typer.Option(None, "--label", min=0, help="cvae: the label (digit) to draw in many styles."),
    n: int = typer.Option(64, "--n", min=1, max=1024, help="How many samples."),
    seed: int = typer.Option(0, "--seed"),
    temperature: float = typer.Option(0.0, "--temperature", min=0, help="0: the decoder's mean image; >0: pixels drawn."),
):
    """Samples from a vae's prior (a cvae's: of one label, in many styles) as one PNG grid."""
    from flows.pipelines import family_sample_flow

    report = _run_flow(family_sample_flow, model=model, out_dir=str(out_dir), label=label, n=n, seed=seed,
                       temperature=temperature)
    out.print(f"{report['n']} samples of {report['model']}: {report['png']}", soft_wrap=True)


@app.command("compare")
def family_compare(
    out_dir: Path = typer.Argument(..., help="Folder for report.json and beta-sweep.png."),
    data: str = typer.Option("digits", "--data", help="digits, mnist, faces or an image folder."),
    latent: str = typer.Option("2,8", "--latent", help="Code sizes, e.g. 2,8."),
    beta_sweep: str = typer.Option("0.25,1,4,16", "--beta-sweep", help="The vae's betas at the largest code size."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Steps per model (default per set)."),
):
    """Train every kind at every code size (cached) beside PCA, and a beta sweep: one table and plots."""
    latents = _ints(latent, "--latent")
    try:
        betas = [float(b) for b in beta_sweep.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{beta_sweep}: numbers, e.g. 0.25,1,4,16", param_hint="--beta-sweep") from None
    _family_data(data)
    from flows.family import summary_table
    from flows.pipelines import family_compare_flow

    report = _run_flow(family_compare_flow, data=data, latents=tuple(latents), betas=tuple(betas),
                       out_dir=str(out_dir), steps=steps)
    out.print(summary_table(report), soft_wrap=True)
    out.print(f"report: {Path(out_dir) / 'report.json'}", soft_wrap=True)
