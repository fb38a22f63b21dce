"""Playability checkers for tile-grid levels (numpy only), as specified and calibrated in
shared/notes/levels.md §4. Each takes integer grids and a Legend and answers per level.

Platformers (Mario, Kid Icarus): Summerville's VGLC jump-arc pathfinder run as a reachability search.
Its state (x, y, arc, step, direction) collapses to the cell (x, y): a mid-jump state has every successor
of the standing/falling state in the same cell (rules 3/4 apply at every step, so a jump can be abandoned)
plus the next arc cell, and an arc's continuation depends only on where it was started. So "reached" is
a fixpoint over cells, computed for a whole batch of grids at once with shifts of bit-packed grids (64 grids
per machine word); it visits exactly the cells the state machine visits.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np

from formats.levels import Legend, get_legend

Arc = tuple[tuple[int, int], ...]    # (dx, dy) offsets from the take-off cell; dy < 0 is up

# VGLC PlatformerPathfinding/SMB.json (Summerville et al. 2016): three near-vertical jumps 4 high and two
# running jumps 8 columns long rising 4, all rightward (mirrored for leftward jumps).
MARIO_ARCS: tuple[Arc, ...] = (
    ((0, -1), (0, -2), (1, -3), (1, -4), (0, -4)),
    ((0, -1), (0, -2), (0, -3), (0, -4), (1, -4)),
    ((1, -1), (1, -2), (1, -3), (1, -4), (2, -4)),
    ((1, -1), (1, -2), (2, -2), (2, -3), (3, -3), (3, -4), (4, -4), (5, -3), (6, -3), (7, -3), (8, -2), (8, -1)),
    ((1, -1), (1, -2), (2, -2), (2, -3), (3, -3), (3, -4), (4, -4), (5, -4), (6, -3), (7, -3), (8, -2), (8, -1)),
)
MARIO_SOLID = "XQS?Bb[]<>"           # the pathfinding file's solid set: enemies `E` and coins `o` are passable


def load_arcs(path: Path, mirror: bool = False) -> tuple[Arc, ...]:
    """Jump arcs from a VGLC jumps file ({"jumps": [[[dx, dy], ...], ...]}); `mirror` adds leftward copies
    (the 5-arc SMB file is rightward only; the `*_estimated_jumps.json` files hold both directions)."""
    arcs = tuple(tuple((int(dx), int(dy)) for dx, dy in a) for a in json.loads(Path(path).read_text())["jumps"])
    return arcs + tuple(tuple((-dx, dy) for dx, dy in a) for a in arcs) if mirror else arcs


ONES = np.uint64(2 ** 64 - 1)        # a packed row with all 64 grids set: one bitwise op steps 64 grids at once


def _pack(a: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (H, W, K) words, grid 64 k + i in bit i of word k (the layout every step below uses)."""
    n, h, w = a.shape
    bits = np.zeros((h, w, -(-n // 64) * 64), dtype=bool)
    bits[..., :n] = a.transpose(1, 2, 0)
    return np.packbits(bits, axis=-1, bitorder="little").view(np.uint64)


def _unpack(p: np.ndarray, n: int) -> np.ndarray:
    """The inverse of _pack: (H, W, K) words -> (N, H, W) bool."""
    return np.unpackbits(p.view(np.uint8), axis=-1, bitorder="little")[..., :n].transpose(2, 0, 1).astype(bool)


def _shift(a: np.ndarray, dx: int, dy: int, wrap: bool) -> np.ndarray:
    """Move every set cell of packed grids (..., H, W, K) by (dx, dy). Off the bottom or the sides: dropped
    (or wrapped in x); above the top: clamped onto row 0 (the pathfinder's rule for jumps out of the screen)."""
    h, w = a.shape[-3], a.shape[-2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(None), slice(None)) if wrap or not dx else \
        (slice(0, w - dx), slice(dx, w)) if dx > 0 else (slice(-dx, w), slice(0, w + dx))
    out = np.zeros_like(a)
    out[..., yd, xd, :] = a[..., ys, xs, :]
    if dy < 0:
        out[..., 0, xd, :] |= np.bitwise_or.reduce(a[..., :-dy, xs, :], axis=-3)
    return np.roll(out, dx, axis=-2) if wrap and dx else out


def _arc_plan(arcs: tuple[Arc, ...]) -> list[list[tuple[tuple[int, int], np.ndarray]]]:
    """Per step k: [((dx, dy), arc indices)] grouping the arcs by their move at that step (the first offset
    at k = 0, then step differences); arcs shorter than k + 1 steps are absent."""
    plan = []
    for k in range(max(len(a) for a in arcs)):
        groups: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arcs):
            if k < len(a):
                d = a[0] if k == 0 else (a[k][0] - a[k - 1][0], a[k][1] - a[k - 1][1])
                groups.setdefault(d, []).append(i)
        plan.append([(d, np.array(idx)) for d, idx in groups.items()])
    return plan


def _arc_cells(s: np.ndarray, free: np.ndarray, alive: np.ndarray, steps, plan, wrap: bool) -> np.ndarray:
    """Cells visited by jumps taken off from the standing cells `s` (packed, H, W, K)."""
    new = np.zeros_like(s)
    if len(steps) <= 20:                     # few arcs (the 5-arc file): one arc at a time
        for first, deltas in steps:
            cur = _shift(s, *first, wrap) & free
            for dx, dy in deltas:
                if not cur.any():
                    break
                new |= cur
                cur = _shift(cur & alive, dx, dy, wrap) & free
            new |= cur
        return new
    # many arcs (the estimated-jumps files, 120-140): all at once, (n_arcs, H, W, K), the arcs that share a
    # step's (dx, dy) shifted together
    cur = np.zeros((len(steps), *s.shape), dtype=s.dtype)
    for k, groups in enumerate(plan):
        src = s if k == 0 else cur & alive
        nxt = np.zeros_like(cur)
        for (dx, dy), idx in groups:
            nxt[idx] = _shift(src if k == 0 else src[idx], dx, dy, wrap) & free
        cur = nxt
        if not cur.any():
            break
        new |= np.bitwise_or.reduce(cur, axis=0)
    return new


def platformer_reach(block: np.ndarray, support: np.ndarray, start: np.ndarray, arcs: tuple[Arc, ...],
                     wrap: bool = False, max_iter: int = 100_000) -> np.ndarray:
    """Cells reached by the VGLC pathfinder's moves (notes §4.1) from `start`.

    block: (N, H, W) cells the player cannot enter; support: cells the player can stand on (block plus
    one-way platforms); start: (N, H, W) start cells. Arcs are used as given (both directions must be in
    the list). Returns (N, H, W) bool. Moves: standing (support below) -> walk one cell sideways or start
    any arc whose first cell is free; in the air -> fall one cell, or drift one sideways while falling one
    or two; a jump follows its arc cell by cell (step differences) while the cells are free and may be
    abandoned at any step. A cell in the bottom row has no successors (falling out = death).
    The search runs on bit-packed grids (_pack): 64 grids per word, 8x less memory to sweep than bools.
    """
    n, h, w = block.shape
    free = _pack(~block)                                       # padding grids: blocked everywhere
    alive = np.full((h, 1, 1), ONES)
    alive[h - 1] = 0                                           # rule 1: y + 1 > H - 1 -> no successors
    below = np.zeros_like(free)
    below[:h - 1] = _pack(support)[1:]
    stand = free & below & alive
    plan = _arc_plan(arcs)
    steps = [(a[0], [(b[0] - p[0], b[1] - p[1]) for p, b in zip(a[:-1], a[1:])]) for a in arcs]
    offsets = np.array([d for a in arcs for d in a])
    up, down, side = max(0, -offsets[:, 1].min()), max(0, offsets[:, 1].max()), np.abs(offsets[:, 0]).max()
    reach = _pack(start) & free
    frontier = reach
    idx = np.arange(reach.shape[-1])    # the words still expanding, and their own free / stand / reach
    free_i, stand_i, reach_i = free, stand, reach
    for _ in range(max_iter):
        s, air = frontier & stand_i, frontier & ~stand_i & alive
        new = _shift(s, 1, 0, wrap) | _shift(s, -1, 0, wrap) | _shift(air, 0, 1, wrap)
        for dx in (-1, 1):
            new |= _shift(air, dx, 1, wrap) | _shift(air, dx, 2, wrap)
        if s.any():
            # arcs only near the standing frontier: a box around it with the arcs' reach as margin, so no arc
            # can leave it except through the level's own edges (the same cells as on the whole grid)
            ys = np.flatnonzero(s.any((1, 2)))
            y0, y1 = max(0, ys[0] - up), min(h, ys[-1] + down + 1)
            xs = np.flatnonzero(s.any((0, 2)))
            x0, x1 = (0, w) if wrap else (max(0, xs[0] - side), min(w, xs[-1] + side + 1))
            box = np.s_[y0:y1, x0:x1]
            new[box] |= _arc_cells(s[box], free_i[box], alive[y0:y1], steps, plan, wrap)
        frontier = new & free_i & ~reach_i                  # only new cells need expanding again
        busy = frontier.any((0, 1))
        if not busy.any():
            break
        reach_i |= frontier
        if busy.mean() < 0.5:           # most words are done (long paths in a few): carry on with the rest only
            reach[..., idx[~busy]] = reach_i[..., ~busy]
            idx, frontier, free_i, stand_i, reach_i = (a[..., busy] for a in (idx, frontier, free_i, stand_i, reach_i))
    reach[..., idx] = reach_i
    return _unpack(reach, n)


def _as_batch(grids) -> tuple[np.ndarray, bool]:
    g = np.asarray(grids)
    return (g[None], True) if g.ndim == 2 else (g, False)


START_COLUMNS = 3      # the player starts on any standable cell of the first 3 columns


def mario_reach(grids, legend: Legend | str = "mario", mode: str = "level",
                arcs: tuple[Arc, ...] | None = None) -> np.ndarray:
    """Cells the Mario pathfinder reaches: (N, H, W) bool (or (H, W) for one grid), for grids of any shape.

    Start: every standable cell (free, solid below) of the first START_COLUMNS columns, in both modes. Full
    levels ("level") once started at the VGLC annotator's fixed cell (x 2, y 2), which fails a level whose
    cell (2, 2) is solid (an SMB2-Japan level that VGLC's own path completes); the modes now differ only in
    name, kept for callers. Arcs default to MARIO_ARCS mirrored.
    """
    if mode not in ("level", "window"):
        raise ValueError(f"mode must be 'level' or 'window', got {mode!r}")
    legend = get_legend(legend)
    g, single = _as_batch(grids)
    block = legend.mask(MARIO_SOLID)[g]
    arcs = arcs or MARIO_ARCS + tuple(tuple((-dx, dy) for dx, dy in a) for a in MARIO_ARCS)
    start = np.zeros_like(block)
    k = START_COLUMNS
    start[:, :-1, :k] = ~block[:, :-1, :k] & block[:, 1:, :k]       # empty slices for 1-row or narrow grids
    reach = platformer_reach(block, block, start, arcs)
    return reach[0] if single else reach


def mario_playable(grids, legend: Legend | str = "mario", mode: str = "level") -> np.ndarray | bool:
    """Mario jump-arc playability (notes §4.1): from a standable cell of the first 3 columns the last column
    is reached. Originals: 15 / 15 full levels (VGLC's, and mario-gpt's copy without their first 4 columns),
    98.2 % of 14 x 16 and 14 x 28 windows. Enemies are ignored; the check is lenient (no lifts, falling drift
    bridges some gaps), so it is an upper bound on what the A* player finishes. A grid with no standable
    cell there (1 row, all solid) is unplayable, not an error."""
    reach = np.asarray(mario_reach(grids, legend, mode))
    ok = reach[..., -1].any(-1)
    return bool(ok) if ok.ndim == 0 else ok


def mario_pipes_ok(grids, legend: Legend | str = "mario") -> np.ndarray | bool:
    """Structural validity of Mario pipes (notes §3): `<` `>` and `[` `]` come in left-right pairs, a pipe
    top or body has body or something solid below it (down to the ground or another pipe), and a body has
    body or a top above it. Cells past the grid's edges count as fine (a window may cut a pipe)."""
    legend = get_legend(legend)
    g, single = _as_batch(grids)
    t = {c: g == legend.index(c) for c in "<>[]"}
    solid = legend.mask(MARIO_SOLID)[g]

    def at(a, dy, dx, fill=True):                       # a shifted so that out[y, x] = a[y + dy, x + dx]
        out = np.full_like(a, fill)
        h, w = a.shape[1:]
        out[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
            a[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
        return out

    left, right = t["<"] | t["["], t[">"] | t["]"]
    bad = (t["<"] & ~at(t[">"], 0, 1)) | (t["["] & ~at(t["]"], 0, 1))        # left halves need their right
    bad |= (t[">"] & ~at(t["<"], 0, -1)) | (t["]"] & ~at(t["["], 0, -1))    # and the other way round
    bad |= (left | right) & ~at(solid, 1, 0)                                # something solid below
    bad |= (t["["] | t["]"]) & ~at(left | right, -1, 0)                     # body under body or a top
    ok = ~bad.any((1, 2))
    return bool(ok[0]) if single else ok


KI_BLOCK, KI_SUPPORT = "#DH", "#DHTM"    # T, M: one-way platforms, stood on but passed through from below


def kid_icarus_playable(grids, legend: Legend | str = "kid_icarus", arcs: tuple[Arc, ...] | None = None,
                        goal_row: int | None = None, start_rows: int = 3) -> np.ndarray | bool:
    """Kid Icarus (notes §4.5): Mario's rules with its own arcs (pass `load_arcs("Kid Icarus_estimated_jumps.json")`;
    default: Mario's arcs), one-way platforms and horizontal wrap-around. Start: standable cells in the
    lowest `start_rows` rows that have any; goal: a cell in `goal_row` or above (default: the top row).
    Uncalibrated for generated 16 x 16 windows (the notes' variant); full levels pass the annotations."""
    legend = get_legend(legend)
    g, single = _as_batch(grids)
    block, support = legend.mask(KI_BLOCK)[g], legend.mask(KI_SUPPORT)[g]
    below = np.zeros_like(support)
    below[:, :-1] = support[:, 1:]
    standable = ~block & below
    rows = np.arange(g.shape[1])[None, :, None]
    lowest = np.where(standable.any(2), np.arange(g.shape[1])[None], -1).max(1)     # (N,) lowest row with a start
    start = standable & (rows > (lowest - start_rows)[:, None, None])
    arcs = arcs or MARIO_ARCS + tuple(tuple((-dx, dy) for dx, dy in a) for a in MARIO_ARCS)
    reach = platformer_reach(block, support, start, arcs, wrap=True)
    ok = reach[:, :(goal_row or 0) + 1].any((1, 2)) & (lowest >= 0)
    return bool(ok[0]) if single else ok


# ---------------------------------------------------------------- blends (Mario + Kid Icarus)

# A blended segment is scored by both games' checkers, each on the segment seen in its own tiles: the other
# game's solids become ground, its passable extras (Mario's enemies and coins) empty. Kid Icarus's one-way
# platforms T, M and its hazards H and doors D are blocks to Mario's rule (it has no one-way tiles; the
# Kid Icarus checker blocks H and D too); Mario's solids are ground `#` to Kid Icarus's rule.
AS_MARIO = {"#": "X", "T": "X", "M": "X", "H": "X", "D": "X"}
AS_KID_ICARUS = {**{t: "#" for t in MARIO_SOLID}, "E": "-", "o": "-"}


def as_game(grids, legend: Legend | str, game: str, mapping: dict[str, str]) -> np.ndarray:
    """Union-legend grids -> `game`'s indices, characters outside `game` replaced by `mapping`."""
    legend, target = get_legend(legend), get_legend(game)
    chars = [mapping.get(t, t) for t in legend.tiles]
    unknown = [c for c in chars if c not in target.tiles]
    if unknown:
        raise ValueError(f"tiles {''.join(unknown)!r} of {legend.game} have no mapping to {target.game}")
    return np.array([target.index(c) for c in chars], dtype=np.uint8)[np.asarray(grids, dtype=np.intp)]


def blend_playable(grids, legend: Legend | str = "mario+kid_icarus") -> dict[str, np.ndarray]:
    """{"mario": Mario's window rule (left to right, start in the first 3 columns, reach the last),
    "kid_icarus": Kid Icarus's rule (bottom to top, wrap-around, one-way platforms)}: (N,) bool each."""
    g, _ = _as_batch(grids)
    return {"mario": np.asarray(mario_playable(as_game(g, legend, "mario", AS_MARIO), "mario", "window")).reshape(-1),
            "kid_icarus": np.asarray(kid_icarus_playable(as_game(g, legend, "kid_icarus", AS_KID_ICARUS))).reshape(-1)}


# ---------------------------------------------------------------- Lode Runner (notes §4.3)

LR_PASSABLE = ".GEM#-"


def lode_runner_graph(grid: np.ndarray, legend: Legend | str = "lode_runner", dig: bool = True) -> list[list[int]]:
    """Successor lists over cells (index y * W + x) of the MM-NEAT LodeRunnerState move model: sideways
    only when on a ladder/rope, on B/b/# or on the bottom row; up a ladder; down into anything but B
    (into diggable b only when a neighbour of the target is not empty: one-step digging)."""
    legend = get_legend(legend)
    t = np.array(list(legend.tiles))[np.asarray(grid, dtype=np.intp)]      # (H, W) characters
    h, w = t.shape
    succ: list[list[int]] = [[] for _ in range(h * w)]
    for y in range(h):
        for x in range(w):
            c = t[y, x]
            if c not in LR_PASSABLE + "b":
                continue                                   # never inside B; inside b only after digging it (a hole)
            out = succ[y * w + x]
            held = c in "#-" or y == h - 1 or t[y + 1, x] in "Bb#"
            for nx in (x - 1, x + 1):
                if held and 0 <= nx < w and t[y, nx] in LR_PASSABLE:
                    out.append(y * w + nx)
            if c == "#" and y > 0 and t[y - 1, x] in LR_PASSABLE:
                out.append((y - 1) * w + x)
            if y + 1 < h:
                below = t[y + 1, x]
                if below in LR_PASSABLE:
                    out.append((y + 1) * w + x)
                elif below == "b" and dig:
                    beside = [t[y + 1, nx] for nx in (x - 1, x + 1) if 0 <= nx < w]
                    if any(c != "." for c in beside):
                        out.append((y + 1) * w + x)
    return succ


def _closure(succ: list[list[int]], start: int) -> set[int]:
    seen, todo = {start}, deque([start])
    while todo:
        for v in succ[todo.popleft()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen


def lode_runner_check(grid: np.ndarray, legend: Legend | str = "lode_runner", dig: bool = True) -> dict:
    """{"each_gold": every G reachable from the single M; "all_gold": all gold in one run (the components
    holding M and each G are totally ordered by reachability: exact for this move graph); "gold",
    "reached"}. No spawn or several, or no gold: unplayable. Originals: each 140 / 149, all 131 / 149; with dig=False
    (strict, pcg_benchmark rule) 34 / 149."""
    legend = get_legend(legend)
    g = np.asarray(grid)
    w = g.shape[1]
    spawn = np.flatnonzero(g.ravel() == legend.index("M"))
    gold = [int(i) for i in np.flatnonzero(g.ravel() == legend.index("G"))]
    if len(spawn) != 1:
        return {"each_gold": False, "all_gold": False, "gold": len(gold), "reached": 0,
                "reason": f"{len(spawn)} spawns (need exactly one)"}
    if not gold:                 # nothing to collect is no level (notes §3: one M and at least one G); every
        return {"each_gold": False, "all_gold": False, "gold": 0, "reached": 0,   # original has >= 4
                "reason": "no gold"}
    succ = lode_runner_graph(g, legend, dig)
    reach = {int(spawn[0]): _closure(succ, int(spawn[0]))}
    reached = [v for v in gold if v in reach[int(spawn[0])]]
    each = len(reached) == len(gold)
    chain = each
    if each and len(gold) > 1:
        # all in one run <=> for every pair, one reaches the other (then a topological walk collects all)
        for v in gold:
            reach[v] = _closure(succ, v)
        chain = all(b in reach[a] or a in reach[b] for i, a in enumerate(gold) for b in gold[i + 1:])
    return {"each_gold": each, "all_gold": chain, "gold": len(gold), "reached": len(reached),
            "spawn": [int(spawn[0]) // w, int(spawn[0]) % w]}


def lode_runner_playable(grids, legend: Legend | str = "lode_runner", dig: bool = True) -> np.ndarray | bool:
    """All gold collectable in one run (criterion 2 of notes §4.3), per grid."""
    g, single = _as_batch(grids)
    ok = np.array([lode_runner_check(x, legend, dig)["all_gold"] for x in g])
    return bool(ok[0]) if single else ok


# ---------------------------------------------------------------- Zelda rooms (notes §4.4)

ZELDA_DOORS = {"top": ((1, 4), (1, 5), (1, 6)), "bottom": ((14, 4), (14, 5), (14, 6)),
               "left": ((7, 1), (8, 1)), "right": ((7, 9), (8, 9))}
ZELDA_WALK = "FMODS"


def zelda_check(room: np.ndarray, legend: Legend | str = "zelda", walk: str = ZELDA_WALK) -> dict:
    """One 16 x 11 room block: {"playable", "doors": sides with a `D`, "stairs", "frame"}. Playable iff the
    outer `W` frame is intact, there is a door or a stair, and a 4-connected walk over `walk` tiles from a
    door (or stair) reaches every door side and every stair. `walk` + "P" (+ "B") gives the lenient variants
    (water crossed with the ladder, push-blocks). Originals: 358 / 407 strict, 387 with P, 405 with P and B."""
    legend = get_legend(legend)
    t = np.array(list(legend.tiles))[np.asarray(room, dtype=np.intp)]
    h, w = t.shape
    if (h, w) != (16, 11):                    # the door cells are fixed: another shape is no room (1 row: no crash)
        return {"doors": [], "stairs": int((t == "S").sum()), "frame": False, "playable": False}
    frame = (t[0] == "W").all() and (t[-1] == "W").all() and (t[:, 0] == "W").all() and (t[:, -1] == "W").all()
    doors = {side: [c for c in cells if t[c] == "D"] for side, cells in ZELDA_DOORS.items()}
    doors = {k: v for k, v in doors.items() if v}
    stairs = [tuple(map(int, c)) for c in zip(*np.nonzero(t == "S"))]
    info = {"doors": sorted(doors), "stairs": len(stairs), "frame": bool(frame)}
    targets = [v for v in doors.values()] + [[s] for s in stairs]
    if not frame or not targets:
        return {**info, "playable": False}
    ok = np.isin(t, list(walk))
    seen, todo = {targets[0][0]}, deque([targets[0][0]])
    while todo:
        y, x = todo.popleft()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and ok[ny, nx] and (ny, nx) not in seen:
                seen.add((ny, nx))
                todo.append((ny, nx))
    return {**info, "playable": all(any(c in seen for c in cells) for cells in targets)}


def zelda_playable(grids, legend: Legend | str = "zelda", walk: str = ZELDA_WALK) -> np.ndarray | bool:
    g, single = _as_batch(grids)
    ok = np.array([zelda_check(x, legend, walk)["playable"] for x in g])
    return bool(ok[0]) if single else ok


CHECKERS = {"mario": mario_playable, "kid_icarus": kid_icarus_playable, "lode_runner": lode_runner_playable,
            "zelda": zelda_playable}


def playable(grids, game: str, **kw) -> np.ndarray | bool:
    """The game's primary checker (see CHECKERS)."""
    if game not in CHECKERS:
        raise ValueError(f"no playability checker for {game!r}; have: {', '.join(CHECKERS)}")
    return CHECKERS[game](grids, **kw)
