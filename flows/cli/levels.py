"""`aeflow levels train|sample|interpolate|check`: game levels as tile grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flows.cli.common import (_device, _file_column, _ints, _out_folder, _print_removed, _print_skipped, _run_flow,
                               launch, nproc_option)
from flows.progress import out

app = typer.Typer(help="Game levels: train a VAE on tile grids, sample playable levels, interpolate, check.",
                  no_args_is_help=True)
GAMES_HELP = ("mario, kid_icarus, lode_runner or zelda; or the blend mario+kid_icarus (--data: the Kid Icarus "
              "folder, Mario from mario-gpt; or MARIO_DIR,KI_DIR)")


@app.command("train")
def levels_train(
    game: str = typer.Option("mario", "--game", help=f"Game: {GAMES_HELP}; or a VGLC legend .json for any other game (whole levels, or --width windows; no playability checker)."),
    data: Optional[Path] = typer.Option(None, "--data", help="VGLC game folder (its processed/ subfolder is used when present). Default for mario: the levels in the mario-gpt package."),
    model: str = typer.Option("vae", "--model", help="vae, or cvae (Mario: conditioned on enemies/pipes/gaps buckets; mario+kid_icarus: on the game, for --blend)."),
    beta: float = typer.Option(0.5, "--beta", min=0, help="Weight of the KL term (1 = plain VAE; smaller: sharper, less regular latent space)."),
    latent: int = typer.Option(32, "--latent", min=1, help="Latent dimensions."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Conv features per level, e.g. 16,32,64 (the default; 64,128,256 with --units columns)."),
    units: str = typer.Option("cells", "--units", help="cells: a softmax over tiles per cell; columns: over the whole columns of the training windows, each drawn after the ones before it (pipes, stairs and blocks come out whole; tile-pattern KL 10x lower on Mario)."),
    ar: Optional[int] = typer.Option(None, "--ar", help="Columns before each column that the decoder sees (default: 3 with --units columns, else 0; cells need 0)."),
    width: Optional[int] = typer.Option(None, "--width", min=2, help="Window width in columns (Mario: 28 default, 16 usual too; Kid Icarus: window height)."),
    playable_only: Optional[bool] = typer.Option(None, "--playable-only/--all-units", help="Learn from the units the game's checker passes, or from all (default: playable only for Mario, whose unplayable windows are cuts that start over a gap; all for the other games, whose unplayable levels and rooms are content)."),
    steps: int = typer.Option(6000, "--steps", min=1, help="Optimiser steps (the shipped mario-vae: 6000, 9 minutes on 2 CPU cores)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", callback=_device, help="auto, cpu or cuda."),
    refresh: bool = typer.Option(False, "--refresh", help="Rebuild the cached ingest and training stages."),
    nproc: int = nproc_option(),
):
    """Ingest a game's levels (cut into training units) and train a VAE on them; both stages are cached."""
    if units not in ("cells", "columns"):
        raise typer.BadParameter(f"{units}: cells or columns", param_hint="--units")
    if ar is not None and (ar < 0 or (ar and units == "cells")):
        raise typer.BadParameter(f"{ar}: columns >= 0; cells take 0", param_hint="--ar")
    from flows.levels import BLENDS, _sources, blend_sources

    # no --data, or no level files in it: said before Prefect starts, not as a failed flow run
    (blend_sources if game in BLENDS else _sources)(game, str(data) if data else None)
    launch(nproc, batch_size)         # before the flows' import, which starts Prefect's API
    from flows.pipelines import levels_train_flow

    model_cfg = {"beta": beta, "latent": latent, **({"widths": _ints(widths)} if widths else {}),
                 **({"ar": ar} if ar is not None else {})}
    training = {"steps": steps, "batch_size": batch_size, "seed": seed, "device": device,
                "epoch_steps": max(1, min(500, steps))}
    trained = _run_flow(levels_train_flow, game=game, data=str(data) if data else None, kind=model, model=model_cfg,
                        training=training, width=width, refresh=refresh, units=units, playable_only=playable_only)
    folder, record = trained.folder, trained.manifest
    spec, m, d = record["config"]["model"], record["metrics"], record["data"]
    left_out = d.get("left_out_unplayable")
    out.print(f"[bold]model[/] {folder}")
    out.print(f"  {spec['kind']} on {d['train_windows']} {game} units "
              f"{'' if left_out is None else f'(the playable ones; {left_out} unplayable left out) '}"
              f"{tuple(spec['shape'])}, {record['parameters']:,} parameters, {record['steps']} steps in {record['seconds']:.0f} s")
    # files the ingest could not use, told apart from the unplayable units above ("0 left out" hid 409 of them)
    _print_skipped(folder.parents[1] / "levels-ingest" / d["ingest"])
    out.print(f"  validation (held-out levels {', '.join(d['held_out'])}): tile accuracy {m['val_acc']:.3f}, "
              f"ELBO {m['val_elbo']:.1f} nats, KL {m['val_kl']:.1f}")
    out.print(f"  sample with: aeflow levels sample --model {folder} OUT_DIR")


@app.command("sample")
def levels_sample(
    out_dir: Path = typer.Argument(..., help="Folder for the levels (NAME.txt + NAME.png), contact_sheet.png and report.json."),
    n: int = typer.Option(50, "--n", min=1, help="How many levels."),
    length: Optional[int] = typer.Option(None, "--length", min=1, help="Mario: full-length levels of this many columns (a latent walk decoded window by window, seams checked). Default: one window."),
    seed: int = typer.Option(0, "--seed", help="Seed of the torch.Generator that draws every latent."),
    cond: Optional[str] = typer.Option(None, "--cond", help="Mario windows with these features: e.g. enemies=many,pipes=some,gaps=none (none/few/some/many); a cvae draws them (auto: the shipped mario-cvae)."),
    raw: bool = typer.Option(False, "--raw", help="Keep the raw decoder output, playable or not (default: playable only, resampled)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0, help="0: the most likely tile (or column) per step; 0.5-1: drawn from the decoder (richer; a cell model's tiles get noisier). Default: 1 for a model with an ar head (the shipped column models), else 0."),
    model: str = typer.Option("auto", "--model", help="auto (the shipped mario-columns: whole columns, so pipes and blocks come out whole; with --cond the shipped mario-cvae), mario-vae (shipped: a tile per cell), a model folder, or a shipped or trained model's name or unique prefix."),
    blend: Optional[float] = typer.Option(None, "--blend", help="Game-blend cvae (--game mario+kid_icarus) only: weight of Kid Icarus in [0, 1]; 0 = pure Mario, 1 = pure Kid Icarus."),
    spread: float = typer.Option(1.0, "--spread", min=0, max=1, help="Latent spread in (0, 1]: 1 samples the whole prior; lower keeps to its centre, less varied and, for the cell model, more often playable (mario-vae windows at 0.6 with --temperature 1: 98.7 % raw playable, median of 5 seeds; the originals: 98.2 %)."),
):
    """Sample new levels; by default only playable ones (how many were rejected is reported).

    Exit status 1 when fewer than --n could be delivered."""
    _out_folder(out_dir)
    from flows.levels import check_sample
    from flows.pipelines import levels_sample_flow

    check_sample(None if model == "auto" else model, cond, spread, length, blend)     # mistakes before Prefect starts
    r = _run_flow(levels_sample_flow, out_dir=str(out_dir), model=None if model == "auto" else model, n=n,
                  length=length, seed=seed, cond=cond, raw=raw, temperature=temperature, blend=blend, spread=spread)
    raw_p, d = r["raw_playability"], r["delivered"]
    out.print(f"[bold]{d['of']} {r['game']} {r['kind']}s[/] {tuple(r['shape'])} in {r['seconds']:.1f} s -> {out_dir}")
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    out.print(f"  playable: raw {pct(raw_p['rate'])} of {raw_p['of']} drawn (95 % CI {pct(raw_p['ci95'][0])}-"
              f"{pct(raw_p['ci95'][1])}), delivered {pct(d['rate'])}; originals {r['originals_rate']}")
    rejected = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r["rejected"].items())
    out.print("  rejected: none (--raw keeps every draw)" if r.get("raw") else f"  rejected: {rejected}")
    if "novelty" in r:
        out.print(f"  novel {r['novelty']['novel']:.1%} (nearest training window differs in {r['novelty']['nn_hamming']:.1%} "
                  f"of tiles), distinct {r['diversity']['distinct']:.1%}, TPKL 2x2 {r['tpkl']['k2']:.3f}")
    if "raw_rules" in r:                     # a blend: each game's rule on the raw samples
        out.print("  rules (raw): " + ", ".join(f"{g} {pct(v['rate'])}" for g, v in r["raw_rules"].items())
                  + "; tile shares: " + ", ".join(f"{g}-only {v:.1%}" for g, v in r.get("tile_shares", {}).items()))
    if r.get("shortfall"):
        out.print(f"  [red]{r['shortfall']}[/]")
    _print_removed(r)
    sheet = f"contact sheet: {Path(out_dir) / 'contact_sheet.png'}; " if "contact_sheet.png" in r["outputs"] else ""
    out.print(f"  {sheet}report: {Path(out_dir) / 'report.json'}")
    if r.get("shortfall"):                      # fewer than asked: a script must not take it for the whole batch
        raise typer.Exit(1)


@app.command("interpolate")
def levels_interpolate(
    level_a: Path = typer.Argument(..., help="First level file (VGLC text)."),
    level_b: Path = typer.Argument(..., help="Second level file."),
    out_dir: Path = typer.Argument(..., help="Folder for step-NNN.txt/.png, contact_sheet.png, report.json."),
    steps: int = typer.Option(8, "--steps", min=2, help="Points on the line between the two encodings, ends included."),
    model: str = typer.Option("auto", "--model", help="auto (the shipped mario-columns: the middle steps keep the corpus's enemies and most pipes whole; mario-vae brings the ends back closer, 99 % of their tiles against 87 %, but washes enemies and ? blocks out), a model folder, or a trained model name."),
    slerp: bool = typer.Option(True, "--slerp/--lerp", help="Along the great circle between the codes (the default: the middle steps keep prior-typical codes) or the straight line."),
    temperature: float = typer.Option(0.0, "--temperature", min=0, help="0: the most likely tile; 1: tiles drawn as the model was trained."),
    seed: int = typer.Option(0, "--seed"),
):
    """Blend two levels through the latent space (wide levels window by window)."""
    _out_folder(out_dir)
    from flows.pipelines import levels_interpolate_flow

    r = _run_flow(levels_interpolate_flow, level_a=str(level_a), level_b=str(level_b), out_dir=str(out_dir),
                  steps=steps, model=None if model == "auto" else model, spherical=slerp, temperature=temperature,
                  seed=seed)
    out.print(f"{r['steps']} steps of {r['width']} columns ({r['windows']} window(s)) -> {out_dir}; playable: "
              + " ".join("[green]y[/]" if p else "[red]n[/]" for p in r["playable"]))
    e = r["ends_match"]
    out.print(f"  the ends are the model's decodings of A and B: {e['a']:.1%} and {e['b']:.1%} of their tiles come back")
    st = r["stats"]
    show = lambda v: ("y" if v else "n") if isinstance(v, bool) else f"{v:g}"         # noqa: E731
    for key in st["a"]:
        corpus = st["corpus_per_same_width"][key]
        out.print(f"  {key.replace('_', ' ')} per step: {' '.join(show(s[key]) for s in st['steps'])} (A {show(st['a'][key])}, "
                  f"B {show(st['b'][key])}; corpus: {f'{corpus:.0%} of windows' if isinstance(st['a'][key], bool) else f'{corpus:g} at this width'})")
    if r.get("cut"):
        out.print(f"  [yellow]{r['cut']}[/]")


@app.command("check")
def levels_check(
    target: Path = typer.Argument(..., help="A level file, or a folder (every *.txt under it)."),
    game: str = typer.Option("mario", "--game", help=f"Game: {GAMES_HELP}."),
    mode: str = typer.Option("auto", "--mode", help="Mario: window, level, or auto (window up to 32 columns); both start on any standable cell of the first 3 columns and must reach the last column."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
):
    """Playability report for any level files (ours or not), beside the checker's pass rate on the originals.

    Files that cannot be read are listed with a reason (exit status 1); unplayable levels are a result, not an error."""
    from formats.levels import get_legend

    get_legend(game)                                      # an unknown game, before Prefect starts
    if mode not in ("auto", "window", "level"):
        raise typer.BadParameter(f"{mode!r}: auto, window or level", param_hint="--mode")
    from flows.levels import files_to_check

    files_to_check(target)                                # missing, or a folder without level files
    from flows.pipelines import levels_check_flow

    r = _run_flow(levels_check_flow, path=str(target), game=game, mode=mode)
    if as_json:
        print(json.dumps(r, indent=2))
        raise typer.Exit(1 if r["bad"] else 0)
    table = Table(_file_column(), "shape", "playable")
    for lv in r["levels"][:50]:
        verdict = "[green]yes[/]" if lv["playable"] else "[red]no[/]"
        if "rooms_playable" in lv:
            verdict = f"{lv['rooms_playable']} / {lv['rooms_with_doors']} rooms"
        table.add_row(lv["file"], "x".join(map(str, lv["shape"])), verdict)
    out.print(table)
    if len(r["levels"]) > 50:
        out.print(f"  ... and {len(r['levels']) - 50} more (--json)")
    s = r["summary"]
    if s:
        unit = " rooms" if r["unit"] == "rooms" else ""
        out.print(f"[bold]{s['playable']} / {s['of']}{unit} playable[/] ({s['rate']:.1%}, 95 % CI {s['ci95'][0]:.1%}-{s['ci95'][1]:.1%})"
                  f"; originals under this checker: {r['originals']}")
    if r.get("skipped"):
        out.print(f"  skipped {len(r['skipped'])} VGLC path annotation(s), copies of levels checked here, e.g. "
                  f"{r['skipped'][0]['file']}")
    for f in r["bad"][:10]:
        out.print(f"  [red]bad[/] {f['reason']}")
    if r["bad"]:
        raise typer.Exit(1)
