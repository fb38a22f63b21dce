"""`aeflow music train|sample|interpolate|stats`: music clips from a conv VAE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flows.cli.common import (_device, _file_column, _ints, _out_folder, _print_removed, _print_skipped, _run_flow,
                               launch, nproc_option)
from flows.progress import out

app = typer.Typer(help="Music clips: train a conv VAE on melodies or chorales, sample, morph, measure.",
                  no_args_is_help=True)


def _music_wav_check(wav: bool) -> None:
    if wav:
        from flows.music import wav_tools

        try:
            wav_tools()
        except RuntimeError as e:
            raise typer.BadParameter(str(e), param_hint="--wav") from None


def _program(value: str | None) -> int | None:
    """--program flute / 73 -> 73, checked before any work."""
    from formats.music import parse_program

    try:
        if value is not None and value.strip().startswith("-"):
            raise ValueError(f"program {value}: General MIDI programs are 0-127")
        return None if value is None else parse_program(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _print_clips(report: dict, what: str) -> None:
    s = report.get("summary") or {}
    out.print(f"[bold]{len(report['clips'])} {what}[/] in {report['out_dir']} (MIDI + piano-roll PNG each"
              f"{', WAV' if report['clips'] and 'wav' in report['clips'][0] else ''}) for "
              f"{', '.join(report['instruments'])}; model {report['model']}")
    if s:
        out.print(f"  mean per clip: {s['notes']:.0f} notes, empty bars {s['empty_bars']:.2f}, pitch classes per bar "
                  f"{s['upc']:.2f}, notes >= an 8th {s['qualified']:.2f}, in scale {s['in_scale']:.2f}")
    if k := report.get("in_key"):
        from flows.music import KEY_ROUNDS

        rest = ", ".join(f"{v} in {name}" for name, v in k["others"].items())
        out.print(f"  in {k['asked']}: {k['clips']} of {k['of']} clips" + (f"; {rest} (the other mode after "
                  f"{KEY_ROUNDS} redraws, or no transposition to the tonic fit the model's range)" if rest else ""))
    _print_removed(report)
    out.print(f"  report: {Path(report['out_dir']) / 'report.json'}")


@app.command("train")
def music_train(
    corpus: str = typer.Option("essen", "--corpus", help="bach (371 chorales), essen (Essen folk songs), oneills, ryans, airds, folk (music21's corpus, parsed once and cached); nottingham (Nottingham.mat in data/nottingham/, or its path); or a folder of MIDI files."),
    mode: str = typer.Option("melody", "--mode", help="melody (one voice; the soprano of a chorale) or chorale (four voices, S A T B)."),
    bars: int = typer.Option(2, "--bars", min=1, help="Window length in 4/4 bars of 16 steps (2, 4, 8 ...)."),
    condition: str = typer.Option("none", "--condition", help="none (vae), or a conditional VAE on key (tonic + mode), mode (major/minor) or meter."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only this many pieces, evenly spread over the corpus (quick trials)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", min=0, help="Wall-clock training budget (default 5 when no --steps)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps instead of a time budget."),
    epoch_steps: int = typer.Option(200, "--epoch-steps", min=1, help="Steps between validations/checkpoints."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(2e-3, "--lr"),
    widths: Optional[str] = typer.Option(None, "--widths", help="Conv channels per level, e.g. 64,128,256 (each level halves time)."),
    latent: int = typer.Option(32, "--latent", min=1, help="Latent dimensions."),
    beta: float = typer.Option(1.0, "--beta", min=0, help="KL weight (beta-VAE); below 1 reconstructs better, samples worse."),
    ar: int = typer.Option(0, "--ar", help="The decoder also sees this many steps before each step (e.g. 6): more short notes kept together and a better ELBO, but z holds less (reconstructions and morphs weaker) and sampling goes step by step, 3-5x slower. 0: none."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", callback=_device, help="auto, cpu or cuda."),
    refresh: bool = typer.Option(False, "--refresh", help="Re-ingest and retrain instead of reusing cached stages."),
    nproc: int = nproc_option(),
):
    """Train a music VAE (cached: an unchanged second run trains nothing; a killed run resumes)."""
    if mode not in ("melody", "chorale"):
        raise typer.BadParameter(f"{mode!r}: melody or chorale", param_hint="--mode")
    if ar < 0:
        raise typer.BadParameter(f"{ar}: 0 (none) or a number of steps", param_hint="--ar")
    if condition not in ("none", "key", "mode", "meter"):
        raise typer.BadParameter(f"{condition!r}: none, key, mode or meter", param_hint="--condition")
    from flows.music import CORPORA, nottingham_file
    from formats.music import find_midi

    known = corpus in CORPORA or corpus == "nottingham" or Path(corpus).suffix == ".mat"
    if not known and not Path(corpus).expanduser().is_dir():
        raise typer.BadParameter(f"{corpus!r} is neither a corpus ({', '.join(CORPORA)}, nottingham) nor a folder "
                                 "of MIDI files", param_hint="--corpus")
    if corpus == "nottingham":
        nottingham_file()                                 # a missing file says where to put it, before Prefect starts
    elif not known:
        find_midi(Path(corpus).expanduser())              # a folder without MIDI files, before Prefect starts
    model = {"latent": latent, "beta": beta, "ar": ar, **({"widths": _ints(widths)} if widths else {})}
    if minutes is None and steps is None:
        minutes = 5.0
    training = {k: v for k, v in dict(minutes=minutes, steps=steps, epoch_steps=epoch_steps, batch_size=batch_size,
                                      lr=lr, seed=seed, device=device).items() if v is not None}
    launch(nproc, batch_size)         # before the flows' import, which starts Prefect's API
    from flows.pipelines import music_train_flow

    trained = _run_flow(music_train_flow, source=corpus, mode=mode, bars=bars, limit=limit, model=model,
                        training=training, condition=None if condition == "none" else condition, refresh=refresh)
    folder, record = trained.folder, trained.manifest
    spec, d, m = record["config"]["model"], record["data"], record["metrics"]
    out.print(f"[bold]model[/] {folder}")
    out.print(f"  {spec['kind']}, {d['mode']} {d['bars']}-bar windows of {d['source']}: {d['train_windows']:,} "
              f"training windows (transposed), {d['val_windows']:,} held out; {record['parameters']:,} parameters, "
              f"{record['steps']} steps in {record['seconds']:.0f} s")
    out.print(f"  held-out reconstruction accuracy {m['val_acc']:.3f}, ELBO {m['val_elbo']:.1f} nats/window, "
              f"KL {m['val_kl']:.1f}; sample with `aeflow music sample --model {folder.name} OUT_DIR`")
    _print_skipped(folder.parents[1] / "ingest-music" / d.get("ingest", ""))


@app.command("sample")
def music_sample(
    out_dir: Path = typer.Argument(..., help="Where the clips go (clip-000.mid, clip-000.png, ..., report.json)."),
    n: int = typer.Option(20, "--n", min=1, help="Number of clips."),
    bars: int = typer.Option(8, "--bars", min=1, help="Clip length in 4/4 bars; longer than the model's window = a smooth latent walk, window by window."),
    tempo: float = typer.Option(100.0, "--tempo", min=4, max=1000, help="Beats per minute written into the MIDI files."),
    program: Optional[str] = typer.Option(None, "--program", callback=_program, help="Instrument: a General MIDI name (flute, piano, violin, choir, 'church organ') or program number, 0-based (73 flute); default: the model's (flute for melodies, choir for chorales)."),
    key: Optional[str] = typer.Option(None, "--key", help="Key, e.g. D, F#m, Bb: a key-conditioned model is asked for it (a clip that comes out in another key is drawn again), else clips are transposed to it. Default: keys as often as the training corpus uses them."),
    seed: int = typer.Option(0, "--seed"),
    model: str = typer.Option("auto", "--model", help="auto (the shipped 2-bar melody model; with --key its key-conditioned twin), a model folder, or a trained model's name prefix."),
    walk: float = typer.Option(0.35, "--walk", min=0, max=3.1416, help="Latent step between windows in radians: 0 repeats the window, 1.57 draws each afresh."),
    temperature: float = typer.Option(1.0, "--temperature", min=0, help="Each step's token is drawn from softmax(logits / T): 1 samples the model as trained; below 1 smoother, longer notes; 0 takes the most likely."),
    wav: bool = typer.Option(False, "--wav", help="Also render WAV with fluidsynth (needs fluidsynth and fluid-soundfont-gm)."),
):
    """Generate new MIDI clips (with piano-roll PNGs) from a music model."""
    _out_folder(out_dir)
    from flows.music import music_data, parse_key, resolve_music_model
    from flows.pipelines import music_sample_flow

    _music_wav_check(wav)
    if key:
        parse_key(key)                                    # mistakes before Prefect starts
    music_data(resolve_music_model(model, key))
    report = _run_flow(music_sample_flow, out_dir=str(out_dir), model=model, n=n, bars=bars, tempo=tempo,
                       program=program, key=key, seed=seed, wav=wav, angle=walk,
                       temperature=temperature)
    _print_clips(report, "clips")


@app.command("interpolate")
def music_interpolate(
    a: Path = typer.Argument(..., help="MIDI file to start from (from its first bar with notes, window by window)."),
    b: Path = typer.Argument(..., help="MIDI file to end at."),
    out_dir: Path = typer.Argument(..., help="Where step-00.mid ... and morph.mid (all steps in a row) go."),
    steps: int = typer.Option(8, "--steps", min=2, help="Points on the path, A and B included."),
    tempo: float = typer.Option(100.0, "--tempo", min=4, max=1000),
    program: Optional[str] = typer.Option(None, "--program", callback=_program, help="Instrument: a General MIDI name or number, as for `music sample`."),
    model: str = typer.Option("auto", "--model", help="auto, a model folder, or a trained model's name prefix."),
    wav: bool = typer.Option(False, "--wav", help="Also render WAV (fluidsynth)."),
    slerp: bool = typer.Option(True, "--slerp/--lerp", help="Along the great circle between the codes (the default) or the straight line."),
    temperature: float = typer.Option(0.0, "--temperature", min=0, help="0: the most likely token; 1: drawn as the model was trained."),
    seed: int = typer.Option(0, "--seed"),
):
    """Morph tune A into tune B through the model's latent space, every bar of the shorter one, window by window."""
    from formats.music import BadMidi, read_midi

    _out_folder(out_dir)
    for path, hint in ((a, "A"), (b, "B")):
        try:
            read_midi(path)                       # a clear error before Prefect starts
        except BadMidi as e:
            raise typer.BadParameter(str(e), param_hint=hint) from None
    _music_wav_check(wav)
    from flows.pipelines import music_interpolate_flow

    report = _run_flow(music_interpolate_flow, a=str(a), b=str(b), out_dir=str(out_dir), model=model,
                       steps=steps, tempo=tempo, program=program, wav=wav, spherical=slerp, temperature=temperature,
                       seed=seed)
    _print_clips(report, "steps")
    st = report["stats"]
    corpus = st["corpus"]
    for key in ("notes_per_bar", "pitch_range"):
        out.print(f"  {key.replace('_', ' ')} per step: {' '.join(f'{s[key]:g}' for s in st['steps'])} "
                  f"(A {st['a'][key]:g}, B {st['b'][key]:g}"
                  + (f", corpus {corpus[key]:g})" if isinstance(corpus, dict) else ")"))
    r = report["reconstruction_accuracy"]
    out.print(f"  reconstruction accuracy of the end points: A {r['a']:.2f}, B {r['b']:.2f}; all steps in a row: "
              f"{Path(report['out_dir']) / 'morph.mid'}")
    for label, flags in report.get("read_notes", {}).items():
        out.print(f"  [yellow]{label.upper()}: {'; '.join(flags)}[/]")
    if min(r.values()) < 0.5:                   # the shipped models reconstruct their own kind of tune at 0.86-0.97
        out.print("  [yellow]the model does not hold an end point well (below 0.5): the morph starts or ends far from "
                  "it; a model of the tune's kind (melody or chorale, `aeflow models`) does better[/]")


@app.command("stats")
def music_stats(
    target: Path = typer.Argument(..., help="A MIDI file or a folder of them (recursive)."),
    mode: str = typer.Option("melody", "--mode", help="melody (top line of all parts) or chorale (first four parts as voices)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
):
    """Metrics of MIDI files: empty bars, pitch classes per bar, qualified notes, in-scale rate, range, intervals, key.

    For chorales, also the soprano-bass tonal distance. Bad files are listed with a reason (exit status 1)."""
    from formats.music import find_midi

    if mode not in ("melody", "chorale"):
        raise typer.BadParameter(f"{mode!r}: melody or chorale", param_hint="--mode")
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such file or folder")
    if target.is_dir():
        find_midi(target)                                 # a folder without MIDI files, before Prefect starts
    from flows.pipelines import music_stats_flow

    report = _run_flow(music_stats_flow, target=str(target), mode=mode)
    if as_json:
        print(json.dumps(report, indent=2))
        raise typer.Exit(1 if report["counts"]["failed"] else 0)
    cols = ["notes", "empty_bars", "upc", "qualified", "in_scale", "pitch_range", "interval", "key"]
    heads = ["notes", "empty bars", "pcs/bar", ">= 8th", "in scale", "range", "interval", "key"]
    if mode == "chorale":
        cols.append("tonal_distance")
        heads.append("TD S-B")
    table = Table(_file_column(), "bars", *heads)
    fmt = lambda v: "" if v is None else v if isinstance(v, str) else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in report["files"]:
        table.add_row(r["file"], f"{r['steps'] / 16:g}", *(fmt(r.get(c, "")) for c in cols))
    if report["files"]:
        table.add_row("[bold]mean[/]", "", *(fmt(report["mean"].get(c, "")) for c in cols))
    out.print(table)
    c = report["counts"]
    out.print(f"{c['read']} read, [{'red' if c['failed'] else 'green'}]{c['failed']} failed[/] of {c['files']} files")
    for f in report["failed"][:10]:
        out.print(f"  [red]failed[/] {f['file']}: {f['reason']}")
    flagged = [r for r in report["files"] if r.get("flags")]
    for r in flagged[:10]:                                 # read, but not as written (moved notes, empty voices)
        out.print(f"  [yellow]note[/] {r['file']}: {'; '.join(r['flags'])}")
    if len(flagged) > 10:
        out.print(f"  ... and {len(flagged) - 10} more files with notes (--json)")
    if c["failed"]:
        raise typer.Exit(1)
