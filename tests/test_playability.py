"""Playability checkers: hand-made tiny levels that must pass and must fail, then the calibration against
the original VGLC levels and their path annotations (shared/notes/levels.md, Tables C and §4)."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from formats.levels import get_legend, level_files, level_to_grid, read_level, windows, zelda_rooms
from formats.playability import (MARIO_ARCS, MARIO_SOLID, kid_icarus_playable, load_arcs, lode_runner_check,
                                 mario_playable, mario_reach, zelda_check)

# ../shared/data/vglc beside the checkout; AEFLOW_VGLC for a checkout elsewhere (a git worktree)
VGLC = Path(os.environ.get("AEFLOW_VGLC") or Path(__file__).resolve().parents[2] / "shared" / "data" / "vglc")
needs_vglc = pytest.mark.skipif(not VGLC.is_dir(), reason=f"VGLC data not found at {VGLC}")


def grid(game: str, *rows: str) -> np.ndarray:
    return level_to_grid("\n".join(rows), game)


FLAT = ["-" * 12] * 5 + ["X" * 12]


def mario(rows):
    return grid("mario", *rows)


def test_mario_flat_ground_passes_and_walls_and_gaps_decide():
    assert mario_playable(mario(FLAT)) and mario_playable(mario(FLAT), mode="window")
    # a gap of 8 columns is jumpable (running arc 8 long), a gap of 10 is not
    for gap, ok in ((3, True), (8, True), (10, False)):
        ground = "XX" + "-" * gap + "X" * 10
        level = ["-" * len(ground)] * 5 + [ground]
        assert mario_playable(mario(level), mode="window") == ok, gap
    # a wall 4 high can be jumped onto; 5 high cannot
    for h, ok in ((4, True), (5, False)):
        rows = ["-" * 12 for _ in range(8)] + ["X" * 12]
        rows = [r[:6] + ("X" if i >= 8 - h else "-") + r[7:] for i, r in enumerate(rows)]
        assert mario_playable(mario(rows), mode="window") == ok, h


def test_a_batch_is_checked_as_each_grid_alone():
    """The search packs 64 grids per machine word: 70 random levels (over a word boundary, a partly filled
    last word) reach exactly the cells each reaches on its own, in both Mario modes and Kid Icarus's wrap."""
    rng = np.random.default_rng(0)
    g = np.zeros((70, 8, 14), dtype=np.uint8)
    g[:, -1] = get_legend("mario").index("X")
    g[rng.random(g.shape) < 0.35] = get_legend("mario").index("X")
    g[rng.random(g.shape) < 0.2] = 0
    for mode in ("window", "level"):
        batch = mario_reach(g, mode=mode)
        assert np.array_equal(batch, np.stack([mario_reach(one, mode=mode) for one in g]))
        assert 0 < batch[:, :, -1].any(1).mean() < 1                 # some pass, some fail: a real mix
    ki = g % len(get_legend("kid_icarus").tiles)
    assert np.array_equal(kid_icarus_playable(ki), [kid_icarus_playable(one) for one in ki])


def test_mario_enemies_and_coins_are_passable_pipes_are_solid():
    assert mario_playable(mario(["-" * 8] * 4 + ["--EoE---", "XXXXXXXX"]), mode="window")
    pipe = lambda body: ["--------"] * 3 + ["---<>---"] + ["---[]---"] * body + ["XXXXXXXX"]  # noqa: E731
    assert mario_playable(mario(pipe(3)), mode="window")                 # 4 tiles high: jumpable
    assert not mario_playable(mario(pipe(4)), mode="window")             # 5 high: not


def test_mario_window_needs_a_start_and_level_mode_falls_from_the_top():
    assert not mario_playable(mario(["-" * 8] * 6), mode="window")         # nothing to stand on
    assert not mario_playable(mario(["-" * 8] * 6), mode="level")          # falls out of the bottom
    reach = mario_reach(mario(FLAT), mode="level")
    assert reach[4].all() and not reach[5].any()                           # walks the row above the ground


def test_a_full_level_starts_on_a_standable_cell_of_the_first_columns():
    """A full level used to start at the fixed cell (row 2, column 2): under a ceiling that cell is solid and
    the level failed (a held-out SMB2-Japan level that VGLC's path completes; mario-gpt's copies of 1-2 and 4-2,
    which lack VGLC's first 4 columns). Now it starts as a window does, on the standable cells of the first 3
    columns; no standable cell (nothing to stand on, a 1-row level) is unplayable, not an error."""
    cave = ["X" * 30] * 3 + ["-" * 30] * 9 + ["X" * 30] * 2            # ceiling rows 0-2: cell (2, 2) is solid
    assert mario_playable(mario(cave), mode="level") and mario_playable(mario(cave), mode="window")
    assert not mario_reach(mario(cave), mode="level")[:3].any()            # never inside the ceiling
    for rows in (["-" * 35], ["-"] * 3, ["X"], ["X" * 8] * 4):
        assert not mario_playable(mario(rows), mode="level") and not mario_playable(mario(rows), mode="window")


def test_every_checker_answers_for_any_shape():
    """1-row, 1-column and tiny grids of random tiles: a verdict from every checker, never an IndexError."""
    from formats.playability import playable

    rng = np.random.default_rng(0)
    for shape in ((1, 35), (3, 1), (1, 1), (2, 2), (14, 1), (2, 40), (16, 1), (16, 11)):
        for game in ("mario", "kid_icarus", "lode_runner", "zelda"):
            for _ in range(5):
                g = rng.integers(0, get_legend(game).vocab, shape).astype(np.uint8)
                assert isinstance(playable(g, game), bool), (game, shape)


@pytest.mark.skipif(importlib.util.find_spec("mario_gpt") is None, reason="the mario-gpt package is not installed")
def test_mario_gpt_copies_of_the_levels_pass_as_vglc_s_do():
    """`sample --length` reports its corpus (mario-gpt's copy, each level 4 columns short) beside its samples;
    it said 13 / 15 where `levels check` on VGLC's files says 15 / 15: both 15 / 15 now."""
    from formats.levels import mario_gpt_levels

    levels = mario_gpt_levels()
    assert len(levels) == 15 and all(mario_playable(g, mode="level") for _, g in levels)


def test_kid_icarus_wraps_around_and_platforms_are_one_way():
    # climbing: platforms `T` every 3 rows, alternating sides reached only through the wrap-around
    rows = ["################"] + ["-" * 16] * 2
    for i in range(3):
        rows += ["-" * 16, "-" * 16, ("TTTT" + "-" * 12) if i % 2 else ("-" * 12 + "TTTT")]
    rows += ["-" * 16, "-" * 16, "################"]
    rows[0] = "-" * 16                                               # goal: the top row is open
    g = grid("kid_icarus", *rows)
    assert kid_icarus_playable(g)
    blocked = grid("kid_icarus", *rows[:4], "################", *rows[5:])
    assert not kid_icarus_playable(blocked)                          # a solid ceiling stops it


def lode(*rows):
    return grid("lode_runner", *rows)


def test_lode_runner_ladders_ropes_digging_and_one_run():
    assert lode_runner_check(lode("....", "M.G.", "BBBB"))["all_gold"]
    # gold on a ledge only reachable by a ladder
    up = lode("..G.", ".#bb", "M#..", "BBBB")
    assert lode_runner_check(up)["all_gold"]
    assert not lode_runner_check(lode("..G.", "..bb", "M...", "BBBB"))["each_gold"]
    # gold under diggable brick: dig down (one step) reaches it; solid B does not
    assert lode_runner_check(lode("M...", "bbbb", ".G..", "BBBB"))["each_gold"]
    assert not lode_runner_check(lode("M...", "BBBB", ".G..", "BBBB"))["each_gold"]
    assert not lode_runner_check(lode("M...", "bbbb", ".G..", "BBBB"), dig=False)["each_gold"]
    # two golds in pits you cannot climb out of: each reachable, not both in one run
    pits = lode("...M...", "BB.B.BB", "BBGBGBB", "BBBBBBB")
    r = lode_runner_check(pits)
    assert r["each_gold"] and not r["all_gold"]
    assert not lode_runner_check(lode("....", "..G.", "BBBB"))["each_gold"]     # no spawn


def room(*interior_rows: str, doors=("left", "right")) -> np.ndarray:
    """A 16 x 11 Zelda room: W frame 2 thick, 12 x 7 interior, `D` on the given sides."""
    t = [list("W" * 11) for _ in range(16)]
    for r, row in enumerate(interior_rows):
        t[2 + r][2:9] = list(row)
    cells = {"top": [(1, 4), (1, 5), (1, 6)], "bottom": [(14, 4), (14, 5), (14, 6)],
             "left": [(7, 1), (8, 1)], "right": [(7, 9), (8, 9)]}
    for side in doors:
        for y, x in cells[side]:
            t[y][x] = "D"
    return grid("zelda", *("".join(r) for r in t))


def test_zelda_doors_connected_water_splits_frame_matters():
    open_room = room(*["FFFFFFF"] * 12)
    assert zelda_check(open_room)["playable"]
    moat = room(*(["FFFFFFF"] * 12)[:0], *[("FFFPFFF") for _ in range(12)])
    assert not zelda_check(moat)["playable"] and zelda_check(moat, walk="FMODSP")["playable"]
    assert not zelda_check(room(*["FFFFFFF"] * 12, doors=()))["playable"]       # no door, no stair
    broken = open_room.copy()
    broken[0, 3] = get_legend("zelda").index("F")
    assert not zelda_check(broken)["playable"]                                  # frame not intact


# ---------------------------------------------------------------- calibration on the originals

def path_mask(path: Path) -> np.ndarray:
    rows = [r for r in path.read_bytes().replace(b"\r", b"").split(b"\n") if r]
    return np.array([[c == ord("x") for c in r] for r in rows])


@needs_vglc
def test_mario_reaches_the_annotated_paths_of_all_15_levels_and_a_gap_breaks_one():
    smb = VGLC / "super_mario_bros"
    solid = get_legend("mario").mask(MARIO_SOLID)
    covered = total = 0
    files = level_files(smb / "processed")
    assert len(files) == 15
    for f in files:
        g = read_level(f, "mario")
        reach = mario_reach(g)
        assert reach[:, -1].any(), f.name
        x = path_mask(smb / "paths" / f"{f.stem}_Annotated_Path.txt") & ~solid[g]
        covered, total = covered + int((reach & x).sum()), total + int(x.sum())
    assert total == 3394 and covered / total >= 0.999          # notes: 3,392 / 3,394 with the 5-arc file
    g = read_level(smb / "processed" / "mario-1-1.txt", "mario")
    g[-2:, 10:20] = get_legend("mario").index("-")    # a 10-column hole in the ground where nothing is above it
    assert not mario_playable(g)
    arcs = load_arcs(smb / "platformer_pathfinding_SMB.json", mirror=True)
    assert arcs[:5] == MARIO_ARCS and len(arcs) == 10        # the built-in arcs are the VGLC file's


@needs_vglc
@pytest.mark.parametrize("width, expected", [(16, (2649, 2698)), (28, (2472, 2518))])
def test_mario_window_pass_rate_of_the_originals(width, expected):
    files = level_files(VGLC / "super_mario_bros" / "processed")
    w = np.concatenate([windows(read_level(f, "mario"), width) for f in files])
    ok = mario_playable(w, mode="window")
    assert (int(ok.sum()), len(w)) == expected                    # 98.2 % both


@needs_vglc
def test_lode_runner_and_zelda_rates_of_the_originals():
    levels = [read_level(f, "lode_runner") for f in level_files(VGLC / "lode_runner" / "processed")]
    assert len(levels) == 150
    checks = [lode_runner_check(g) for g in levels]
    assert sum(c["each_gold"] for c in checks) == 140 and sum(c["all_gold"] for c in checks) == 131
    assert sum(lode_runner_check(g, dig=False)["each_gold"] for g in levels) == 34
    maps = level_files(VGLC / "zelda" / "processed", "tloz*.txt")
    rooms = np.concatenate([zelda_rooms(read_level(f, "zelda")) for f in maps])
    assert len(rooms) == 421
    scored = [zelda_check(r) for r in rooms]
    with_target = [s for s in scored if s["doors"] or s["stairs"]]
    assert (sum(s["playable"] for s in with_target), len(with_target)) == (358, 407)
    assert sum(zelda_check(r, walk="FMODSPB")["playable"] for r in rooms) == 405


@needs_vglc
def test_kid_icarus_levels_reach_their_annotated_top():
    ki = VGLC / "kid_icarus"
    arcs = load_arcs(ki / "paths" / "Kid Icarus_estimated_jumps.json")
    for f in level_files(ki / "processed"):
        top = int(np.nonzero(path_mask(ki / "paths" / f"{f.stem}_Annotated_Path.txt").any(1))[0].min())
        assert kid_icarus_playable(read_level(f, "kid_icarus"), arcs=arcs, goal_row=top), f.name
