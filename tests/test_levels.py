"""Level codecs, readers (bad files), unit cutting, rendering, metrics, and the levels flows end to end
on a tiny model (2 training steps)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from formats.levels import (LEGENDS, BadLevel, contact_sheet, cut_units, diversity, get_legend, grid_to_level,
                            grid_to_onehot, legend_from_json, level_files, level_to_grid, mario_gpt_levels,
                            novelty, onehot_to_grid, read_level, render_level, tpkl, wilson, windows, zelda_rooms)
from models.checkpoints import read_config

# ../shared/data/vglc beside the checkout; AEFLOW_VGLC for a checkout elsewhere (a git worktree)
VGLC = Path(os.environ.get("AEFLOW_VGLC") or Path(__file__).resolve().parents[2] / "shared" / "data" / "vglc")
needs_vglc = pytest.mark.skipif(not VGLC.is_dir(), reason=f"VGLC data not found at {VGLC}")
TINY = {"widths": [8, 16], "latent": 4}
TINY_TRAINING = {"steps": 2, "epoch_steps": 1, "batch_size": 4}


def test_codecs_round_trip_for_every_game():
    rng = np.random.default_rng(0)
    for name, legend in LEGENDS.items():
        g = rng.integers(0, legend.vocab, (7, 9)).astype(np.uint8)
        text = grid_to_level(g, legend)
        assert text.count("\n") == 7 and set(text) <= set(legend.tiles + "\n")
        assert np.array_equal(level_to_grid(text, legend), g)
        onehot = grid_to_onehot(g, legend.vocab)
        assert onehot.shape == (legend.vocab, 7, 9) and np.array_equal(onehot.sum(0), np.ones((7, 9)))
        assert np.array_equal(onehot_to_grid(onehot), g)
        batch = grid_to_onehot(np.stack([g, g]), legend.vocab)
        assert batch.shape == (2, legend.vocab, 7, 9)


def test_line_end_quirks_are_accepted_and_path_marks_read_as_empty():
    g = level_to_grid("--X\n-EX\n", "mario")
    for variant in ("--X\r\n-EX\r\n", "\ufeff--X\n-EX", "--X\r-EX\r", "--X\n-EX\n\n\n"):
        assert np.array_equal(level_to_grid(variant, "mario"), g)
    assert np.array_equal(level_to_grid("x-X\n-EX", "mario"), g)


@pytest.mark.parametrize("data, where, words", [
    (b"--X\n-QZ\n", ":2:3", "'Z' is not in the mario legend"),
    (b"--X\n-X\n", ":2:3", "ragged rows"),
    (b"--X\n-\x00X\n", ":2:2", "binary data"),
    (b"", "", "empty level"),
    (b"--X\n\xff-X\n", ":2:1", "not in the mario legend"),
])
def test_bad_level_files_name_file_line_and_column(tmp_path, data, where, words):
    path = tmp_path / "Level 3.txt"
    path.write_bytes(data)
    with pytest.raises(BadLevel) as e:
        read_level(path, "mario")
    assert str(e.value).startswith(f"{path}{where}: ") and words in str(e.value)
    with pytest.raises(BadLevel, match="no such file"):
        read_level(tmp_path / "missing.txt", "mario")


def test_columns_count_characters_not_bytes(tmp_path):
    """A multibyte UTF-8 tile is one column, as an editor shows it: the error points at the character, and a
    legend JSON's non-ASCII tile reads (it used to count as 2 tiles, a ragged row)."""
    path = tmp_path / "a.txt"
    path.write_text("-é-X\n--Z-\n", encoding="utf-8")
    with pytest.raises(BadLevel) as e:
        read_level(path, "mario")
    assert str(e.value).startswith(f"{path}:1:2: tile 'é'")
    legend = tmp_path / "legend.json"
    legend.write_text(json.dumps({"tiles": {"-": ["empty"], "é": ["solid"]}}), encoding="utf-8")
    lg = legend_from_json(legend)
    path.write_text("-é-\né-Z\n", encoding="utf-8")
    with pytest.raises(BadLevel) as e:
        read_level(path, lg)
    assert str(e.value).startswith(f"{path}:2:3: tile 'Z'")                # bytes would say column 4
    path.write_text("-é-\né--\n", encoding="utf-8")
    assert read_level(path, lg).tolist() == [[0, 1, 0], [1, 0, 0]]


def test_links_are_refused_and_never_read(tmp_path):
    """A file link in the input folder may point anywhere (/etc/passwd): refused as "not a regular file", as
    the image reader does, and its target's content never appears in an error; the other files go on."""
    secret = tmp_path / "secret.txt"
    secret.write_text("Q-hunter2\n")                        # 'Q' is a Mario tile; 'h' is what an error would quote
    data = tiny_corpus(tmp_path)
    (data / "link.txt").symlink_to(secret)
    (data / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    for link in ("link.txt", "dangling.txt"):
        with pytest.raises(BadLevel, match="not a regular file \\(a symbolic link\\)"):
            read_level(data / link, "mario")
    assert {"link.txt", "dangling.txt"} <= {p.name for p in level_files(data)}     # listed, so reported
    from flows.levels import check_levels, ingest_levels

    report = check_levels(str(data))
    assert report["checked"] == 3
    assert sorted(Path(b["file"]).name for b in report["bad"]) == ["dangling.txt", "link.txt"]
    assert "hunter2" not in json.dumps(report) and "'h'" not in json.dumps(report)
    manifest = ingest_levels("mario", str(data)).manifest
    assert manifest["levels"] == 3 and sorted(b["file"] for b in manifest["bad"]) == ["dangling.txt", "link.txt"]
    assert "hunter2" not in json.dumps(manifest)


def test_natural_order_windows_rooms_and_legend_json(tmp_path):
    for name in ("Level 10.txt", "Level 2.txt", "README.txt", "Level 1.txt"):
        (tmp_path / name).write_text("..\n")
    assert [p.name for p in level_files(tmp_path)] == ["Level 1.txt", "Level 2.txt", "Level 10.txt"]
    g = np.arange(3 * 40).reshape(3, 40).astype(np.uint8)
    w = windows(g, 28)
    assert w.shape == (13, 3, 28) and np.array_equal(w[5], g[:, 5:33])
    assert windows(g, 16, 16).shape == (2, 3, 16)
    v = windows(g.T, 16, axis=0)                                   # vertical: (N, 16, cols)
    assert v.shape == (25, 16, 3) and np.array_equal(v[2], g.T[2:18])
    legend = get_legend("zelda")
    room = np.full((16, 11), legend.index("W"), np.uint8)
    room[2:14, 2:9] = legend.index("F")
    dark = np.full((16, 11), legend.index("W"), np.uint8)
    dark[2:14, 2:9] = legend.index("-")
    assert len(zelda_rooms(np.concatenate([np.concatenate([room, dark], 1), np.concatenate([dark, room], 1)]))) == 2
    (tmp_path / "legend.json").write_text(json.dumps({"tiles": {"#": ["solid"], ".": ["passable", "empty"]}}))
    lg = legend_from_json(tmp_path / "legend.json", "toy")
    assert lg.tiles == ".#" and np.array_equal(level_to_grid("#.\n..", lg), [[1, 0], [0, 0]])
    (tmp_path / "bad.json").write_text('{"tiles": {"ab": []}}')
    with pytest.raises(BadLevel, match="single printable"):
        legend_from_json(tmp_path / "bad.json")


def test_rendering_and_contact_sheet_are_real_pngs():
    from PIL import Image
    import io

    g = level_to_grid("-" * 6 + "\n" + "-?S<>-\n" + "XXX[]X", "mario")
    pic = render_level(g, "mario")
    assert pic.shape == (24, 48, 3) and pic.dtype == np.uint8
    assert len({tuple(pic[12, x * 8 + 4]) for x in range(6)}) >= 4                 # tiles differ at a glance
    sheet = Image.open(io.BytesIO(contact_sheet([g, g, g], "mario", ["a", "b", "c"])))
    assert sheet.format == "PNG" and sheet.size[0] > 48


def test_metrics_on_known_sets():
    a = np.zeros((4, 2, 3), np.uint8)
    a[1, 0, 0] = a[2, 1, 1] = a[3] = 1
    nov = novelty(a, a[:2])
    assert nov["novel"] == 0.5 and np.isclose(nov["nn_hamming"], (0 + 0 + 1 / 6 + 5 / 6) / 4)
    div = diversity(a[:2])
    assert div["distinct"] == 1.0 and np.isclose(div["pairwise_hamming"], 1 / 6)
    assert tpkl(a, a, 2) < 1e-6 < tpkl(a, a[:1], 2)
    lo, hi = wilson(98, 100)
    assert 0.92 < lo < 0.98 < hi < 1.0


def test_mario_gpt_corpus_equals_the_vglc_paths():
    pytest.importorskip("importlib.util").find_spec("mario_gpt") or pytest.skip("mario-gpt is not installed")
    levels = mario_gpt_levels()
    assert [n for n, _ in levels][:2] == ["mario-1-1", "mario-1-2"] and len(levels) == 15
    assert sum(g.shape[1] for _, g in levels) == 2923 - 15 * 4
    if VGLC.is_dir():
        p = read_level(VGLC / "super_mario_bros" / "paths" / "mario-1-1_Annotated_Path.txt", "mario")
        assert np.array_equal(levels[0][1], p[:, 4:])               # `x` read as empty on both sides
    # `sample --length` gives these as its originals: 15 / 15 as `levels check` gives VGLC's (it said 13 / 15:
    # 1-2 and 4-2 started at a fixed cell inside their ceiling), and says whose copy they are
    from flows.levels import MARIO_GPT_NOTE, ingest_levels, load_ingest

    originals = load_ingest(ingest_levels("mario"))[3]["originals"]
    assert (originals["levels_playable"], originals["levels"]) == (15, 15) and "first 4 columns" in MARIO_GPT_NOTE


@needs_vglc
def test_vglc_unit_counts():
    smb = [read_level(f, "mario") for f in level_files(VGLC / "super_mario_bros" / "processed")]
    assert sum(len(cut_units("mario", g)) for g in smb) == 2518
    assert sum(len(cut_units("mario", g, 16)) for g in smb) == 2698
    ki = [read_level(f, "kid_icarus") for f in level_files(VGLC / "kid_icarus" / "processed")]
    assert sum(len(cut_units("kid_icarus", g)) for g in ki) == 1165


def tiny_corpus(root: Path) -> Path:
    """Three 14 x 60 Mario levels: flat ground with a gap, a few blocks, an enemy; plus a README to skip."""
    data = root / "smb"
    data.mkdir()
    for i in range(3):
        rows = [["-"] * 60 for _ in range(12)] + [["X"] * 60 for _ in range(2)]
        for x in range(20 + i, 23 + i):
            rows[12][x] = rows[13][x] = "-"
        rows[8][30 + i], rows[11][40 - i] = "?", "E"
        (data / f"level {i}.txt").write_text("\n".join("".join(r) for r in rows))
    (data / "README.txt").write_text("not a level")
    return data


def test_cvae_conditions_round_trip(tmp_path):
    """A cvae trains on bucketed window features and samples under a --cond (plain functions, no Prefect)."""
    from flows.levels import mario_conditions, parse_cond, sample_levels, train_levels

    data = tiny_corpus(tmp_path)
    model = train_levels("mario", str(data), kind="cvae", model=TINY, training=TINY_TRAINING, progress=False).folder
    cfg = read_config(model)
    assert cfg["model"]["kind"] == "cvae" and cfg["model"]["cond"] == [4, 4, 4] and cfg["data"]["job"] == "levels"
    report = sample_levels(str(tmp_path / "out"), model=model, n=2, cond="enemies=many,gaps=none", raw=True)
    assert set(report["cond_match"]) == {"enemies", "gaps"} and len(report["files"]) == 2   # only what was asked
    assert parse_cond("pipes=some").tolist() == [[-1, 2, -1]]
    with pytest.raises(ValueError, match="NAME=LEVEL"):
        parse_cond("coins=many")
    with pytest.raises(ValueError, match="--cond is required"):
        sample_levels(str(tmp_path / "x"), model=model, n=1)
    g = level_to_grid("-" * 28 + "\n" + "-" * 5 + "EEEE" + "-" * 19 + "\n" + "X" * 10 + "-" * 9 + "X" * 9, "mario")
    assert mario_conditions(g[None]).tolist() == [[3, 0, 3]]             # 4 enemies, no pipe, 9 gap columns


def test_unnamed_conditions_follow_the_corpus_and_delivery_checks_the_named_ones():
    import torch

    from flows.levels import cond_ok, fill_cond, mario_conditions, parse_cond

    known = np.array([[0, 3, 1]] * 3 + [[2, 0, 2]])                    # the training windows' buckets
    filled = fill_cond(parse_cond("enemies=many"), 400, known, torch.Generator().manual_seed(0))
    assert (filled[:, 0] == 3).all()                                    # asked
    pairs = {tuple(r) for r in filled[:, 1:]}
    assert pairs == {(3, 1), (0, 2)} and 0.65 < np.mean(filled[:, 1] == 3) < 0.85   # drawn together, ~3:1
    g = level_to_grid("-" * 28 + "\n" + "-" * 5 + "EEEE" + "-" * 19 + "\n" + "X" * 28, "mario")
    assert cond_ok(g[None], parse_cond("enemies=many")).tolist() == [True]
    assert cond_ok(g[None], parse_cond("enemies=many,gaps=some")).tolist() == [False]   # no gap in it
    assert mario_conditions(g[None])[0, 2] == 0


def test_a_level_of_another_shape_is_a_bad_file_for_a_legend_json_game(tmp_path):
    """A legend-file game's units share the shape most levels give; a 1-row level among them is a bad file
    (it used to stop the ingest: "levels of different shapes"); no shape most levels share is still an error."""
    from flows.levels import ingest_levels, load_ingest

    data = tmp_path / "toy"
    data.mkdir()
    legend = tmp_path / "toy.json"
    legend.write_text(json.dumps({"tiles": {"#": ["solid"], ".": ["passable", "empty"]}}))
    for i in range(3):
        (data / f"room{i}.txt").write_text("######\n#" + "." * i + "#" * (4 - i) + "#\n######\n")
    (data / "flat.txt").write_text("######\n")
    x, _, levels, manifest = load_ingest(ingest_levels(str(legend), str(data), width=4))
    assert x.shape == (9, 3, 4) and len(levels) == 3
    assert [b["file"] for b in manifest["bad"]] == ["flat"] and "units of 1 x 4" in manifest["bad"][0]["reason"]
    (data / "room1.txt").write_text("######\n######\n")
    with pytest.raises(ValueError, match="levels of different shapes"):
        ingest_levels(str(legend), str(data), width=4)


def test_any_game_through_a_vglc_legend_json(tmp_path):
    from flows.levels import sample_levels, train_levels

    data = tmp_path / "toy"
    data.mkdir()
    legend = tmp_path / "toy.json"
    legend.write_text(json.dumps({"tiles": {"#": ["solid"], ".": ["passable", "empty"], "k": ["key"]}}))
    for i in range(4):
        (data / f"room{i}.txt").write_text("######\n#." + "." * i + "k" * (3 - i) + "#\n######\n")
    (data / "bad.txt").write_text("######\n#..?.#\n")
    model = train_levels(str(legend), str(data), model=TINY, training=TINY_TRAINING, progress=False).folder
    cfg = read_config(model)
    assert cfg["model"]["vocab"] == 3 and cfg["model"]["shape"] == [3, 6] and cfg["data"]["train_windows"] >= 2
    report = sample_levels(str(tmp_path / "out"), model=model, n=2, raw=True)
    assert [read_level(tmp_path / "out" / f"{f}.txt", str(legend)).shape for f in report["files"]] == [(3, 6)] * 2


@pytest.mark.prefect
def test_levels_flows_end_to_end(tmp_path):
    """Train two steps, sample, check (Prefect flows), then a full level and an interpolation (the same
    functions without Prefect): files written and read back."""
    from flows.levels import interpolate_levels, sample_levels
    from flows.pipelines import levels_check_flow, levels_sample_flow, levels_train_flow

    data = tiny_corpus(tmp_path)
    trained = levels_train_flow(game="mario", data=str(data), model=TINY, training=TINY_TRAINING, progress=False)
    model, record = str(trained.folder), trained.manifest
    spec = record["config"]["model"]
    assert record["steps"] == 2 and spec["vocab"] == 13 and spec["shape"] == [14, 28] and not trained.cached

    out = tmp_path / "windows"
    report = levels_sample_flow(out_dir=str(out), model=model, n=3, seed=1, raw=True, spread=0.5)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["n"] == 3 and on_disk["raw"] is True and "originals" in on_disk and on_disk["spread"] == 0.5
    assert set(on_disk["rejected"].values()) == {0}             # --raw keeps every draw, whatever its rate
    assert report["files"] == ["level-000", "level-001", "level-002"]
    grids = [read_level(out / f"{f}.txt", "mario") for f in report["files"]]
    assert all(g.shape == (14, 28) for g in grids) and (out / "contact_sheet.png").stat().st_size > 0
    assert 0 <= report["novelty"]["novel"] <= 1 and "k2" in report["tpkl"]

    with pytest.raises(ValueError, match="--spread 0"):
        sample_levels(str(tmp_path / "x"), model=model, n=1, spread=0)
    full = sample_levels(str(tmp_path / "full"), model=model, n=1, length=60, seed=2, max_tries=3)   # no Prefect
    if full["delivered"]["of"]:                         # delivered levels pass the full-level checker
        assert full["delivered"]["rate"] == 1.0
        assert read_level(tmp_path / "full" / "level-000.txt", "mario").shape == (14, 60)

    (out / "broken.txt").write_text("--Z\n")
    checked = levels_check_flow(path=str(out), game="mario")
    assert checked["checked"] == 3 and len(checked["bad"]) == 1 and "broken.txt:1:3" in checked["bad"][0]["reason"]
    from typer.testing import CliRunner

    from flows.cli import app
    result = CliRunner().invoke(app, ["levels", "check", str(out)], terminal_width=200)
    assert result.exit_code == 1 and "broken.txt" in result.output      # a bad file: reported, status 1
    assert CliRunner().invoke(app, ["levels", "check", str(out / "level-000.txt")]).exit_code == 0
    assert checked["playable"] == sum(
        bool(__import__("formats.playability", fromlist=["x"]).mario_playable(g, mode="window")) for g in grids)

    first = data / "level 0.txt"
    r = interpolate_levels(str(first), str(first), str(tmp_path / "interp"), steps=3, model=model)
    steps = [read_level(tmp_path / "interp" / f"{f}.txt", "mario") for f in r["files"]]
    assert len(steps) == 3 and np.array_equal(steps[0], steps[-1])      # same level at both ends


@pytest.mark.prefect
def test_a_one_row_or_one_column_level_is_reported_and_the_rest_go_on(tmp_path):
    """`levels check` and `levels train` used to stop at an IndexError on a 1-row or 1-column level. check: every
    checker answers for any shape (unplayable), a Zelda map that is no grid of rooms is a bad file; train: a
    level of the wrong height is a bad file, counted apart from the unplayable units it leaves out."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.levels import check_levels
    from flows.pipelines import levels_check_flow

    data = tiny_corpus(tmp_path)
    (data / "a.txt").write_text("-" * 35 + "\n")
    (data / "b.txt").write_text("-\n-\n-\n")
    checked = levels_check_flow(path=str(data), game="mario")
    verdicts = {r["file"]: r["playable"] for r in checked["levels"]}
    assert checked["checked"] == 5 and not checked["bad"] and not verdicts["a.txt"] and not verdicts["b.txt"]
    for game in ("kid_icarus", "lode_runner", "zelda"):
        one = tmp_path / game
        one.mkdir()
        (one / "a.txt").write_text("-" * 35 + "\n")
        (one / "b.txt").write_text("-\n-\n-\n")
        r = check_levels(str(one), game=game)
        assert r["checked"] + len(r["bad"]) == 2 and r["playable"] == 0, game
        assert all(str(one) in b["reason"] for b in r["bad"])            # zelda: "not a grid of rooms", file named
    result = CliRunner().invoke(app, ["levels", "train", "--data", str(data), "--widths", "8,16", "--latent", "4",
                                      "--steps", "2", "--batch-size", "4"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "2 file(s) could not be read and were left out" in result.output and "14 rows high" in result.output
    assert "unplayable left out" in result.output


@needs_vglc
def test_check_of_a_vglc_game_folder_skips_the_path_annotations():
    """SMB's paths/*_Annotated_Path.txt are copies of processed/ with the path drawn in: checked once, not twice
    (15 / 15, not 30 / 30), listed as skipped; the paths/ folder alone is checked as levels."""
    from flows.levels import check_levels

    r = check_levels(str(VGLC / "super_mario_bros"))
    assert (r["checked"], r["summary"]["playable"], len(r["skipped"])) == (15, 15, 15) and not r["bad"]
    assert all(s["file"].startswith("paths/") and "_Annotated_Path" in s["file"] for s in r["skipped"])
    alone = check_levels(str(VGLC / "super_mario_bros" / "paths"))
    assert (alone["checked"], len(alone["skipped"])) == (15, 0)


def test_a_weak_model_s_shortfall_says_what_to_do_and_zelda_counts_no_pipes(tmp_path):
    """A model trained 2 steps delivers (almost) nothing: the shortfall names the way out (train longer, or
    --raw). A game without pipes reports no "broken pipes"."""
    from flows.levels import sample_levels, train_levels

    legend = get_legend("zelda")
    data = tmp_path / "zelda"
    data.mkdir()
    for i in range(3):
        rooms = []
        for j in range(2):
            room = np.full((16, 11), legend.index("W"), np.uint8)
            room[2:14, 2:9] = legend.index("F")
            room[7:9, 1] = room[7:9, 9] = legend.index("D")
            room[4 + i, 3 + j] = legend.index("B")
            rooms.append(room)
        (data / f"tloz{i}_1.txt").write_text(grid_to_level(np.concatenate(rooms, 1), legend))
    model = train_levels("zelda", str(data), model=TINY, training=TINY_TRAINING, progress=False).folder
    r = sample_levels(str(tmp_path / "out"), model=model, n=4, seed=0, max_tries=1)
    assert "broken_pipes" not in r["rejected"] and "unplayable" in r["rejected"]
    assert r["delivered"]["of"] < 4 and "--raw" in r["shortfall"] and "--steps" in r["shortfall"]
    assert "trained 2 steps" in r["shortfall"]


def test_mario_models_learn_from_playable_windows_unless_asked_for_all(tmp_path):
    """Mario's unplayable windows (cuts that start over a gap) are left out of training by default, counted in the
    model's config; --all-units keeps them; validation keeps them either way; a game without a checker refuses."""
    from flows.levels import ingest_levels, load_ingest, train_levels
    from formats.playability import mario_playable

    data = tiny_corpus(tmp_path)
    x, owner, levels, _ = load_ingest(ingest_levels("mario", str(data)))
    unplayable = ~np.asarray(mario_playable(x, mode="window"))
    assert unplayable.any() and not unplayable.all()           # windows that start in the 3-column gap
    cfgs = [train_levels("mario", str(data), model=TINY, training=TINY_TRAINING, progress=False, **kw).manifest["data"]
            for kw in ({}, {"playable_only": False})]
    mine, every = cfgs
    assert every["train_windows"] + every["val_windows"] == len(x) and "left_out_unplayable" not in every
    held = np.isin(owner, [i for i, (name, _) in enumerate(levels) if name in every["held_out"]])
    assert mine["left_out_unplayable"] == int((unplayable & ~held).sum()) > 0
    assert mine["train_windows"] == every["train_windows"] - mine["left_out_unplayable"]
    assert mine["val_windows"] == every["val_windows"]
    legend = tmp_path / "legend.json"
    legend.write_text(json.dumps({"tiles": {"-": ["empty"], "X": ["solid"]}}))
    with pytest.raises(ValueError, match="no playability checker"):
        train_levels(str(legend), str(data), training=TINY_TRAINING, progress=False, playable_only=True)


def test_column_units_draw_only_training_columns_and_continue_across_seams(tmp_path):
    """--units columns: the vocabulary is the training windows' distinct columns, every window sampled (most
    likely or drawn) is made of them, and a latent walk draws each window after the one before it."""
    import torch

    from flows.levels import column_vocabulary, interpolate_levels, sample_levels, sample_windows, train_levels
    from models.registry import load_model

    data = tiny_corpus(tmp_path)
    model = train_levels("mario", str(data), model={**TINY, "ar": 1}, training=TINY_TRAINING, progress=False,
                         units="columns").folder
    cfg = read_config(model)
    m = cfg["model"]
    assert m["dims"] == 1 and m["ar"] == 1 and m["shape"] == [14, 28] and m["vocab"] == 13
    levels = [read_level(f, "mario") for f in sorted(data.glob("level *.txt"))]
    seen = {tuple(c) for g in levels for c in g.T.tolist()}
    assert {tuple(c) for c in m["columns"]} <= seen and len(m["columns"]) >= 4   # ground, gap, ?, E
    assert column_vocabulary(np.stack([levels[0][:, :28]] * 2))[0] == levels[0][:, 0].tolist()   # most frequent first
    net = load_model(Path(model))
    vocab = {tuple(c) for c in m["columns"]}
    for temperature in (0.0, 1.0):
        grids = sample_windows(net, 16, torch.Generator().manual_seed(0), temperature=temperature)
        assert grids.shape == (16, 14, 28) and {tuple(c) for g in grids for c in g.T.tolist()} <= vocab
    full = sample_levels(str(tmp_path / "full"), model=model, n=1, length=60, seed=0, raw=True, temperature=1.0)
    g = read_level(tmp_path / "full" / f"{full['files'][0]}.txt", "mario")
    assert g.shape == (14, 60) and {tuple(c) for c in g.T.tolist()} <= vocab
    r = interpolate_levels(str(data / "level 0.txt"), str(data / "level 1.txt"), str(tmp_path / "interp"), steps=2,
                           model=model)
    assert [read_level(tmp_path / "interp" / f"{f}.txt", "mario").shape for f in r["files"]] == [(14, 60)] * 2
    with pytest.raises(ValueError, match="cells or columns"):
        train_levels("mario", str(data), training=TINY_TRAINING, progress=False, units="rows")


def test_shipped_column_model_delivers_new_playable_windows_made_of_its_columns(tmp_path):
    """models/pretrained/mario-columns (float16 on disk) is what `sample` draws from by default, at T=1, and it
    delivers only playable, new windows; every column of every file read back is one of its vocabulary."""
    from flows.levels import sample_levels

    report = sample_levels(str(tmp_path / "out"), n=20, seed=0)
    assert Path(report["model"]).name == "mario-columns"
    assert report["temperature"] == 1.0 and report["delivered"]["rate"] == 1.0 and len(report["files"]) == 20
    assert report["raw_playability"]["rate"] > 0.85          # 97 % over 5 x 1000 draws (bench/levels.py --seeds)
    assert "copies_of_training_windows" in report["rejected"] and report["novelty"]["novel"] == 1.0
    cfg = json.loads((Path(report["model"]) / "config.json").read_text())
    vocab = {tuple(c) for c in cfg["model"]["columns"]}
    grids = [read_level(tmp_path / "out" / f"{f}.txt", "mario") for f in report["files"]]
    assert all(g.shape == (14, 28) for g in grids) and {tuple(c) for g in grids for c in g.T.tolist()} <= vocab


def test_cond_draws_the_shipped_column_cvae_and_interpolate_the_cell_vae(tmp_path):
    """`sample --cond` with the auto model takes the shipped mario-cvae (float16 on disk): every delivered window
    has what was asked and is playable, new and unlike the others (a rare mix of features draws repeats, which
    are rejected), and its raw windows land in a rare bucket (4+ enemies: 8 % of the
    training windows) far more often than the plain column model's. `interpolate`'s auto model is the column
    VAE along the slerp; each step's statistics are those of its file; the cell VAE brings the ends back closer."""
    import torch

    from flows.levels import (INTERPOLATE_MODEL, _load, fill_cond, interpolate_levels, mario_conditions, parse_cond,
                              sample_levels, sample_windows)

    report = sample_levels(str(tmp_path / "cond"), n=50, cond="enemies=many,gaps=some", seed=0)
    assert Path(report["model"]).name == "mario-cvae" and report["temperature"] == 1.0
    assert report["delivered"]["rate"] == 1.0 and report["novelty"]["novel"] == 1.0
    grids = np.stack([read_level(tmp_path / "cond" / f"{f}.txt", "mario") for f in report["files"]])
    assert len(grids) == 50 and (mario_conditions(grids)[:, [0, 2]] == [3, 2]).all()   # 4+ enemies, 4-7 gap columns
    assert len({g.tobytes() for g in grids}) == 50 and report["rejected"]["repeats"] > 0   # a rare mix repeats itself
    full = sample_levels(str(tmp_path / "full"), n=2, cond="enemies=many", length=100, seed=0)
    level = read_level(tmp_path / "full" / f"{full['files'][0]}.txt", "mario")
    assert level.shape == (14, 100) and full["cond_match"] == {"enemies": 1.0}     # every window of a long level
    assert (mario_conditions(windows(level, 28, 28))[:, 0] == 3).all()
    cvae, plain = _load("mario-cvae")[0], _load("mario-columns")[0]
    known = mario_conditions(np.concatenate([windows(g, 28, 1) for _, g in mario_gpt_levels()]))   # the corpus
    gen = torch.Generator().manual_seed(0)
    asked = sample_windows(cvae, 300, gen, fill_cond(parse_cond("enemies=many"), 300, known, gen), 1.0)
    free = sample_windows(plain, 300, gen, temperature=1.0)
    many = lambda g: np.mean(mario_conditions(g)[:, 0] == 3)  # noqa: E731
    assert many(asked) > 0.3 and many(free) < 0.15                    # 48 % vs 7 % over 1000 (bench/levels.py)

    (a, level_a), (b, level_b) = mario_gpt_levels()[:2]
    for name, g, end in ((a, level_a, 101), (b, level_b, 110)):             # 61 and 70 columns: not whole windows
        (tmp_path / f"{name}.txt").write_text(grid_to_level(g[:, 40:end], "mario"))
    blend = interpolate_levels(str(tmp_path / f"{a}.txt"), str(tmp_path / f"{b}.txt"), str(tmp_path / "blend"), steps=3)
    assert Path(blend["model"]).name == INTERPOLATE_MODEL == "mario-columns" and blend["path"] == "slerp"
    assert blend["width"] == 61 and blend["windows"] == 3 and "blended over the first 61" in blend["cut"]
    ends = [read_level(tmp_path / "blend" / f"{f}.txt", "mario") for f in (blend["files"][0], blend["files"][-1])]
    assert ends[0].shape == ends[1].shape == (14, 61)                      # no column dropped
    # the column model holds less of a window than the cell model (0.80 of held-out tiles against 0.994): 0.93, 0.77
    assert np.mean(ends[0] == level_a[:, 40:101]) > 0.7 and np.mean(ends[1] == level_b[:, 40:101]) > 0.7
    assert blend["ends_match"] == {"a": round(float(np.mean(ends[0] == level_a[:, 40:101])), 4),
                                   "b": round(float(np.mean(ends[1] == level_b[:, 40:101])), 4)}
    stats, enemy = blend["stats"], get_legend("mario").index("E")
    assert [s["enemies"] for s in stats["steps"]] == [int((g == enemy).sum()) for g in
                                                      (read_level(tmp_path / "blend" / f"{f}.txt", "mario")
                                                       for f in blend["files"])]
    assert stats["a"]["enemies"] == int((level_a[:, 40:101] == enemy).sum())
    assert set(stats["corpus_per_same_width"]) == {"enemies", "question_blocks", "pipes_ok"}
    cells = interpolate_levels(str(tmp_path / f"{a}.txt"), str(tmp_path / f"{b}.txt"), str(tmp_path / "cells"),
                               steps=3, model="mario-vae")          # the cell VAE's latent holds a window
    ends = [read_level(tmp_path / "cells" / f"{f}.txt", "mario") for f in (cells["files"][0], cells["files"][-1])]
    assert np.mean(ends[0] == level_a[:, 40:101]) > 0.95 and np.mean(ends[1] == level_b[:, 40:101]) > 0.95


def test_a_stretch_that_comes_back_whole_is_a_repeat_unless_it_is_plain_ground():
    from flows.levels import REPEAT_COLUMNS, repeats_itself

    code = get_legend("mario").tiles.index
    ground = np.full((14, 1), code("-"), np.uint8)
    ground[12:] = code("X")
    block = np.repeat(ground, REPEAT_COLUMNS, 1)
    block[8, 3], block[11, 7], block[6, 10] = code("?"), code("E"), code("S")        # 4 kinds of column
    plain = np.repeat(ground, 40, 1)
    twice = np.concatenate([block, plain[:, :5], block], 1)
    assert repeats_itself(twice, old=twice.shape[1] - 4)            # the new columns close the second copy
    assert not repeats_itself(twice, old=twice.shape[1] - 4, span=REPEAT_COLUMNS + 1)
    assert not repeats_itself(np.concatenate([block, plain], 1), old=REPEAT_COLUMNS + 10)   # flat ground repeats
    assert not repeats_itself(np.concatenate([twice, plain], 1), old=twice.shape[1] + 12)  # the repeat is all old


def test_full_levels_are_drawn_together_and_every_level_is_checked_whole():
    """Full-length levels for many levels at once, with both shipped Mario models: a batched latent walk gives
    the grids that walks one level at a time give, seam-checked levels are `length` long, playable as whole
    levels and well formed, and with no restarts left a level whose prefix has no playable continuation is
    given up, never delivered cut short."""
    import torch

    from flows.levels import _load, default_temperature, full_levels, walk_windows
    from formats.playability import mario_pipes_ok, mario_playable

    for name in ("mario-vae", "mario-columns"):
        net = _load(name)[0]
        z = torch.randn(3, 2, net.cfg.latent, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            batch = walk_windows(net, z, None)                    # most likely tiles: nothing drawn at random
            levels, _, _ = full_levels(net, 6, 60, torch.Generator().manual_seed(1),
                                       temperature=default_temperature(net))
            one_by_one = np.stack([walk_windows(net, one, None) for one in z])
        assert batch.shape == (3, 14, 56) and np.array_equal(batch, one_by_one)
        assert len(levels) == 6 and all(g.shape == (14, 60) for g in levels)
        assert mario_playable(np.stack(levels), mode="level").all() and mario_pipes_ok(np.stack(levels)).all()
    with torch.no_grad():                                         # one candidate per window: some prefixes fail
        levels, rejected, restarts = full_levels(net, 20, 200, torch.Generator().manual_seed(0), candidates=1,
                                                 temperature=1.0, max_restarts=0)
    assert restarts == 0 and rejected >= 1 and len(levels) < 20       # the failed ones given up, the rest whole
    assert all(g.shape == (14, 200) for g in levels) and mario_playable(np.stack(levels), mode="level").all()


def test_lode_runner_model_places_one_spawn_and_trains_on_mirrored_levels(tmp_path):
    """Lode Runner's spawn `M` is a unique token: decoded as one position, so every sample (most likely or
    drawn tiles) holds exactly one; the training levels are doubled by mirrored copies."""
    import torch

    from flows.levels import sample_windows, train_levels
    from formats.playability import lode_runner_check
    from models.registry import load_model
    from models.vaes import VAEConfig

    data = tmp_path / "lr"
    data.mkdir()
    for i in range(4):
        rows = [["."] * 32 for _ in range(22)]
        rows[20] = ["b"] * 32
        rows[21] = ["B"] * 32
        rows[19][3 + i], rows[19][20 + i] = "M", "G"
        (data / f"Level {i + 1}.txt").write_text("\n".join("".join(r) for r in rows))
    model = train_levels("lode_runner", str(data), model=TINY, training=TINY_TRAINING, progress=False).folder
    cfg = read_config(model)
    spawn = get_legend("lode_runner").index("M")
    assert cfg["model"]["unique"] == [spawn] and cfg["data"]["augment"] == "mirror"
    assert cfg["data"]["train_windows"] == 2 * 3                       # 3 training levels + their mirrors
    net = load_model(model)
    for temperature in (0.0, 1.0):
        grids = sample_windows(net, 5, torch.Generator().manual_seed(0), temperature=temperature)
        assert ((grids == spawn).sum((1, 2)) == 1).all()
    # a level with one spawn and no gold has nothing to play (notes §3: one M and at least one G)
    empty = level_to_grid("....\nM...\nBBBB", "lode_runner")
    assert lode_runner_check(empty)["reason"] == "no gold" and not lode_runner_check(empty)["all_gold"]
    # without unique tokens the config (and so every stage key) is what it was before the field existed
    assert "unique" not in VAEConfig(vocab=3, shape=(4, 4)).model_dump()


def test_union_legend_reads_back_a_padded_mario_window_and_both_games():
    from formats.levels import BLENDS, STYLES, game_tile_shares, pad_top, remap

    union = get_legend("mario+kid_icarus")
    assert BLENDS["mario+kid_icarus"] == ("mario", "kid_icarus")
    assert union.tiles == LEGENDS["mario"].tiles + "#TMHD" and union.tiles[0] == "-"
    window = cut_units("mario", tiny_level(), 16)[0]                         # (14, 16) Mario indices
    unit = pad_top(window, 16)                                               # (16, 16) union indices
    text = grid_to_level(unit, union)
    assert text.startswith("-" * 16 + "\n" + "-" * 16 + "\n") and text.split("\n")[2:-1] == \
        grid_to_level(window, "mario").split("\n")[:-1]
    assert np.array_equal(level_to_grid(text, union), unit)
    ki = level_to_grid("-T-\nH#D\n", "kid_icarus")
    assert grid_to_level(remap(ki, "kid_icarus", union), union) == "-T-\nH#D\n"
    assert set(STYLES["mario+kid_icarus"]) == set(union.tiles)
    assert render_level(unit, union).shape == (128, 128, 3)
    mixed = level_to_grid("-X#\n-T?\n", union)                               # 2 Mario-only, 2 KI-only tiles
    assert game_tile_shares(mixed[None], "mario+kid_icarus") == {"mario": 0.5, "kid_icarus": 0.5}


def tiny_level() -> np.ndarray:
    rows = [["-"] * 30 for _ in range(12)] + [["X"] * 30 for _ in range(2)]
    rows[8][10] = "?"
    return level_to_grid("\n".join("".join(r) for r in rows), "mario")


def tiny_kid_icarus(root: Path) -> Path:
    """Three 20 x 16 Kid Icarus levels: ground at the bottom, one-way platforms every 3 rows up."""
    data = root / "ki"
    data.mkdir()
    for i in range(3):
        rows = [["-"] * 16 for _ in range(19)] + [["#"] * 16]
        for y in range(16, 0, -3):
            for x in range(2 + i + y % 5, 8 + i + y % 5):
                rows[y][x] = "T"
        (data / f"kidicarus_{i + 1}.txt").write_text("\n".join("".join(r) for r in rows) + "\n")
    return data


def test_blend_cvae_trains_on_both_games_and_samples_a_soft_condition(tmp_path):
    """A cvae on Mario + Kid Icarus units (16 x 16, union legend), conditioned on the game; sampled at
    --blend 0.5 (the soft condition (0.5, 0.5)); files read back with the union legend."""
    import torch

    from flows.levels import blend_condition, sample_levels, train_levels
    from formats.playability import blend_playable
    from models.registry import load_model

    data = f"{tiny_corpus(tmp_path)},{tiny_kid_icarus(tmp_path)}"
    model = train_levels("mario+kid_icarus", data, kind="cvae", model=TINY, training=TINY_TRAINING,
                         progress=False).folder
    cfg = read_config(model)
    assert cfg["model"]["cond"] == [2] and cfg["model"]["vocab"] == 18 and cfg["model"]["shape"] == [16, 16]
    assert cfg["data"]["cond"] == ["game"] and cfg["data"]["games"] == ["mario", "kid_icarus"]
    assert {h.split("/")[0] for h in cfg["data"]["held_out"]} == {"mario", "kid_icarus"}   # one level of each
    out = tmp_path / "blend"
    report = sample_levels(str(out), model=model, n=3, blend=0.5, raw=True)
    assert report["condition"] == {"mario": 0.5, "kid_icarus": 0.5} and len(report["files"]) == 3
    grids = np.stack([read_level(out / f"{f}.txt", "mario+kid_icarus") for f in report["files"]])
    assert grids.shape == (3, 16, 16) and (out / "contact_sheet.png").stat().st_size > 0
    rules = blend_playable(grids)
    assert [{"mario": r["mario"], "kid_icarus": r["kid_icarus"]} for r in report["rules"]] == \
        [{"mario": bool(m), "kid_icarus": bool(k)} for m, k in zip(rules["mario"], rules["kid_icarus"])]
    assert set(report["tile_shares"]) == {"mario", "kid_icarus"} and "either" not in report["raw_rules"]
    delivered = sample_levels(str(tmp_path / "kept"), model=model, n=2, blend=0.5, max_tries=3)
    assert all(r["mario"] or r["kid_icarus"] for r in delivered["rules"])     # non-raw: at least one rule passes
    with pytest.raises(ValueError, match="--blend W"):
        sample_levels(str(tmp_path / "x"), model=model, n=1)

    # the soft condition (1 - w, w) is the one-hot of game 0 / 1 at w = 0 / 1: identical decoder output
    net = load_model(Path(model))
    z = torch.randn(5, net.cfg.latent, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for w, label in ((0.0, 0), (1.0, 1)):
            soft = net.decode(z, torch.from_numpy(blend_condition(w)))
            hard = net.decode(z, torch.full((5, 1), label))
            assert torch.equal(soft, hard)
        assert not torch.equal(net.decode(z, torch.from_numpy(blend_condition(0.5))), hard)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_condition(1.5)
