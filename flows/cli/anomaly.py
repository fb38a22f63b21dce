"""`aeflow anomaly series train|score`: a 1-D conv autoencoder per time series; `aeflow anomaly traffic
train|score`: a VAE on network traffic records, scored by its encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.common import _out_folder, _run_flow
from flows.progress import out

app = typer.Typer(help="Anomaly detection: a 1-D conv autoencoder per time series; a VAE on network traffic.",
                  no_args_is_help=True)
series_app = typer.Typer(help="Time series in CSV files (timestamp,value): train a detector per series, score "
                              "points into events.", no_args_is_help=True)
app.add_typer(series_app, name="series")


def _series_files(target: Path) -> None:
    """A missing file or a folder without CSV files, answered before torch and Prefect are imported."""
    from flows.anomaly import find_series

    find_series(target)


def _say_bad(bad: list[dict], limit: int = 10, indent: str = "  ") -> None:
    for b in bad[:limit]:
        out.print(f"{indent}[yellow]line {b['line']}[/]: {b['reason']}", highlight=False)
    if len(bad) > limit:
        out.print(f"{indent}... and {len(bad) - limit} more bad row(s)")


@series_app.command("train")
def series_train(
    target: Path = typer.Argument(..., help="A CSV file (timestamp,value) or a folder of them (recursive)."),
    column: str = typer.Option("value", "--column", help="The column holding the values."),
    window: int = typer.Option(128, "--window", min=8, max=4096, help="Window length in steps of the series."),
    train_fraction: float = typer.Option(0.15, "--train-fraction", min=0.01, max=1.0, help="Train on this first share of each series (0.15: NAB's probationary period)."),
    drop: float = typer.Option(0.05, "--drop", min=0.0, max=0.5, help="Second pass without this share of the windows the first pass reconstructs worst (0: one pass)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps per pass (default 1600, the benchmarked design)."),
    long_gaps: str = typer.Option("join", "--long-gaps", help="Gaps over 12 steps: join (close them up, listed) or refuse (the series is not used)."),
    name: Optional[str] = typer.Option(None, "--name", help="The detector's name instead of the series' (one file only)."),
    refresh: bool = typer.Option(False, "--refresh", help="Train again instead of using the cached detector."),
):
    """Train a detector per series; prints each detector, its threshold and the rows it could not use."""
    if long_gaps not in ("join", "refuse"):
        raise typer.BadParameter(f"{long_gaps}: join or refuse", param_hint="--long-gaps")
    if name and target.is_dir():
        raise typer.BadParameter("names one detector: give one CSV file, not a folder", param_hint="--name")
    _series_files(target)
    from flows.pipelines import anomaly_series_train_flow

    report = _run_flow(anomaly_series_train_flow, target=str(target), column=column, window=window,
                  train_fraction=train_fraction, drop=drop, long_gaps=long_gaps, name=name, refresh=refresh,
                  **({"steps": steps} if steps else {}))      # unset: train_series' default, the benchmarked one
    for d in report["detectors"]:
        g = d["regularised"]
        out.print(f"[bold]detector[/] {d['folder']}", soft_wrap=True)
        when = "cached: trained earlier" if d["cached"] else "trained"
        out.print(f"  {d['series']}: {when} on the first {d['train_points']} points in {d['seconds']:.1f} s; "
                  f"threshold {d['threshold']:.4g}; step {g['step_s']:g} s, {g['filled']} step(s) filled, "
                  f"{g['merged']} point(s) merged, {len(g['joined'])} long gap(s) joined, {len(d['bad'])} bad row(s)")
        _say_bad(d["bad"])
    for f in report["failed"]:
        out.print(f"[red]failed[/] {f['reason']}", soft_wrap=True)


@series_app.command("score")
def series_score(
    target: Path = typer.Argument(..., help="A CSV file or a folder of them."),
    out_dir: Path = typer.Argument(..., help="Folder for <series>/scores.csv, events.json, <series>.png and report.json."),
    model: Optional[str] = typer.Option(None, "--model", help="A detector (folder, name or unique prefix) for every series; default: each series' own, by its name."),
    column: Optional[str] = typer.Option(None, "--column", help="The value column (default: the one the detector was trained on)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="A NAB-style label file ({\"family/file.csv\": \\[\\[start, end], ...]}, NAB's combined_windows.json): the windows are drawn in the plots."),
    gap: int = typer.Option(12, "--gap", min=0, help="Flagged points at most this many points apart are one event."),
):
    """Score every point, merge flagged points into events, draw a plot per series."""
    if labels is not None:
        from flows.anomaly import read_labels

        if not labels.is_file():
            raise typer.BadParameter(f"{labels}: no such file", param_hint="--labels")
        try:
            read_labels(labels)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--labels") from None
    _series_files(target)
    _out_folder(out_dir)
    from flows.pipelines import anomaly_series_score_flow

    report = _run_flow(anomaly_series_score_flow, target=str(target), out_dir=str(out_dir), model=model, column=column,
                  labels=str(labels) if labels else None, gap=gap)
    for r in report["series"]:
        out.print(f"{r['series']}: {r['events']} event(s), {r['flagged']} of {r['points']} points flagged "
                  f"({r['points_per_s']:,} points/s) -> {r['out']}", soft_wrap=True)
        if "warning" in r:
            out.print(f"  [yellow]{r['warning']}[/]", soft_wrap=True, highlight=False)
        _say_bad(r["bad_rows"])
    for f in report["failed"]:
        out.print(f"[red]failed[/] {f['reason']}", soft_wrap=True)
    out.print(f"report: {Path(out_dir) / 'report.json'}", soft_wrap=True)
    if not report["series"]:
        raise typer.Exit(1)


def print_update_report(report: dict) -> None:
    """A scheduled series run's report (flows.anomaly.score_new): what was scored, skipped, bad, failed."""
    c = report["counts"]
    out.print(f"[bold]{c['points']} new point(s) scored[/] in {c['scored']} series, {c['skipped']} skipped (nothing "
              f"new), [{'red' if c['failed'] else 'green'}]{c['failed']} failed[/] in {report['seconds']:.1f} s")
    for r in report["series"] + report["skipped"]:          # each series' own lines under its name
        if r["new_points"]:
            out.print(f"  {r['series']}: {r['new_points']} new point(s), {r['from']} .. {r['to']}, {r['flagged']} "
                      f"flagged; {r['events']} event(s) in all -> {r['out']}", soft_wrap=True, highlight=False)
        elif r["pending"] or r["bad_rows"]:
            out.print(f"  {r['series']}: nothing new", highlight=False)
        for key in ("rescored", "warning"):
            if key in r:
                out.print(f"    [yellow]{r[key]}[/]", soft_wrap=True, highlight=False)
        if r["pending"]:
            out.print("    its last line has no newline yet (still being written): left for the next run",
                      highlight=False)
        _say_bad(r["bad_rows"], indent="    ")
    for f in report["failed"]:
        out.print(f"  [red]failed[/] {f['reason']}", soft_wrap=True)
    out.print(f"  report: {Path(report['out_dir']) / '.aeflow' / 'report.json'}", soft_wrap=True)


traffic_app = typer.Typer(help="Network traffic records (NSL-KDD style, comma-separated): a VAE on normal records, "
                               "scored by its encoder.", no_args_is_help=True)
app.add_typer(traffic_app, name="traffic")


def _records_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")


@traffic_app.command("train")
def traffic_train(
    path: Path = typer.Argument(..., help="Records, comma-separated: a header line, or columns.txt beside the file (NSL-KDD)."),
    label_column: str = typer.Option("attack_type", "--label-column", help="The column that says which records are normal."),
    normal_label: str = typer.Option("normal", "--normal-label", help="The label of normal records (the only ones trained on)."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimiser steps."),
    seed: int = typer.Option(0, "--seed", help="Picks the 20 % of normal records held out to set the thresholds."),
    name: Optional[str] = typer.Option(None, "--name", help="The detector's name instead of the file's."),
    refresh: bool = typer.Option(False, "--refresh", help="Train again instead of using the cached detector."),
):
    """Train a detector on the normal records of PATH; prints its folder and thresholds."""
    _records_file(path)
    from flows.pipelines import anomaly_traffic_train_flow

    d = _run_flow(anomaly_traffic_train_flow, path=str(path), label_column=label_column, normal_label=normal_label,
                  steps=steps, seed=seed, name=name, refresh=refresh)
    out.print(f"[bold]detector[/] {d['folder']}", soft_wrap=True)
    out.print(f"  a VAE on {d['fit_records']} normal records, {len(d['features'])} features; thresholds (p95 of "
              f"{d['held_records']} held-out normal records): score {d['thresholds']['score']:.4g}, "
              f"recon_score {d['thresholds']['recon_score']:.4g}")


@traffic_app.command("score")
def traffic_score(
    path: Path = typer.Argument(..., help="Records with the detector's columns (by name: any order, the label "
                              "column may be absent)."),
    out_dir: Path = typer.Argument(..., help="Folder for scores.csv (one row per record, in order) and report.json."),
    model: Optional[str] = typer.Option(None, "--model", help="A detector (folder, name or unique prefix); "
                                         "default: the newest trained on this file's columns."),
    explain: bool = typer.Option(False, "--explain", help="Name the columns that raise each flagged record's score most, with its values."),
):
    """Score every record into scores.csv, one row per input record in input order.

    Columns: score (encoder only: the code's distance to the nearest normal codes), kl (encoder only: KL to the
    prior), recon_score (reconstruction probability), flag (score >= the detector's threshold; empty for a row
    that could not be read)."""
    _records_file(path)
    _out_folder(out_dir)
    from flows.pipelines import anomaly_traffic_score_flow

    r = _run_flow(anomaly_traffic_score_flow, path=str(path), out_dir=str(out_dir), model=model, explain=explain)
    out.print(f"{r['flagged']} of {r['records']} records flagged ({r['records_per_s']:,} records/s; "
              f"{r['records_with_unseen_categories']} with unseen categories) -> {r['out']}", soft_wrap=True)
    _say_bad(r["bad_rows"])
