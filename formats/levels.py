"""Tile-grid game levels (VGLC text: one character per tile, one row per line) <-> integer grids.

A `Legend` names a game's tile alphabet; a grid is a uint8 (rows, cols) array of indices into it.
Codecs come in pairs: `level_to_grid` / `grid_to_level`, `grid_to_onehot` / `onehot_to_grid`.
Also here: training-unit cutting (windows, Zelda rooms), the Mario corpus shipped in the `mario-gpt`
package, PNG rendering with tiles drawn here, and the sample metrics (novelty, diversity, TPKL).
Data facts (legends, counts, quirks) are from shared/notes/levels.md and the VGLC (Summerville et al. 2016).
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from formats.files import Refused, open_regular

MAX_LEVEL_BYTES = 4 << 20       # VGLC's largest level is 30 kB; anything this big is not a level


class BadLevel(ValueError):
    """A level file that cannot be read; str(e) == "FILE[:LINE[:COL]]: reason" (1-based line and column)."""

    def __init__(self, path, reason: str, line: int | None = None, col: int | None = None):
        super().__init__(path, reason, line, col)       # picklable (Prefect tasks)
        self.path, self.reason, self.line, self.col = path, reason, line, col

    def __str__(self) -> str:
        where = "".join(f":{v}" for v in (self.line, self.col) if v is not None)
        return f"{self.path}{where}: {self.reason}"


# ---------------------------------------------------------------- legends

@dataclass(frozen=True)
class Legend:
    """A game's tiles. `tiles[0]` is the background (empty) tile; a grid holds indices into `tiles`."""

    game: str
    tiles: str
    names: tuple[str, ...]          # one short description per tile
    aliases: tuple[tuple[str, str], ...] = ()   # extra characters read as a tile (Mario path mark `x` -> `-`)

    @property
    def vocab(self) -> int:
        return len(self.tiles)

    def index(self, tile: str) -> int:
        return self.tiles.index(tile)

    def lookup(self) -> np.ndarray:
        """(256,) int16 table: byte -> tile index, -1 for characters not in the legend."""
        table = np.full(256, -1, dtype=np.int16)
        for i, t in enumerate(self.tiles):
            table[ord(t)] = i
        for src, dst in self.aliases:
            table[ord(src)] = self.tiles.index(dst)
        return table

    def mask(self, tiles: str) -> np.ndarray:
        """(vocab,) bool: which indices are among `tiles` (a set of characters, unknown ones ignored)."""
        return np.array([t in tiles for t in self.tiles])


# Tile order: background first, then by frequency (notes §1). Names follow the VGLC legend JSONs.
LEGENDS: dict[str, Legend] = {
    "mario": Legend("mario", "-XS?QE<>[]oBb", (
        "empty", "ground", "breakable brick", "question block", "used question block", "enemy", "pipe top left",
        "pipe top right", "pipe left", "pipe right", "coin", "cannon top", "cannon bottom"),
        aliases=(("x", "-"),)),   # `x` marks the annotated player path (VGLC paths/, mario-gpt): read as empty
    "kid_icarus": Legend("kid_icarus", "-#TMHD", (
        "empty", "ground", "platform (solid top)", "moving platform (solid top)", "hazard", "door")),
    "lode_runner": Legend("lode_runner", ".b#B-GEM", (
        "empty", "diggable brick", "ladder", "solid block", "rope", "gold", "enemy", "player spawn")),
    "zelda": Legend("zelda", "FWBPDOMIS-", (
        "floor", "wall", "block", "lava/water", "door", "element + floor", "monster", "element + block", "stair",
        "void")),
}


def union_legend(a: Legend, b: Legend) -> Legend:
    """Two games' tiles as one alphabet (for blending, Sarkar et al. 2019): all of `a`'s tiles in their order
    (so `a`'s grids are already union grids), then `b`'s that `a` lacks. The background is shared."""
    if a.tiles[0] != b.tiles[0]:
        raise ValueError(f"{a.game} and {b.game} have different background tiles ({a.tiles[0]!r}, {b.tiles[0]!r})")
    extra = [(t, n) for t, n in zip(b.tiles, b.names) if t not in a.tiles]
    return Legend(f"{a.game}+{b.game}", a.tiles + "".join(t for t, _ in extra), a.names + tuple(n for _, n in extra),
                  a.aliases + b.aliases)


# Blends: union legend name -> its games, in condition order (cvae label 0, 1). Tiles keep their meaning
# per game; a character both games use would need one meaning, so only the background may be shared.
BLENDS: dict[str, tuple[str, str]] = {"mario+kid_icarus": ("mario", "kid_icarus")}
for _name, (_a, _b) in BLENDS.items():
    LEGENDS[_name] = union_legend(LEGENDS[_a], LEGENDS[_b])
    assert not set(LEGENDS[_a].tiles[1:]) & set(LEGENDS[_b].tiles[1:]), f"{_name}: a tile character in both games"


def remap(grid: np.ndarray, src: Legend | str, dst: Legend | str) -> np.ndarray:
    """A grid in `src`'s indices -> the same characters as `dst`'s indices (every src tile must be in dst)."""
    src, dst = get_legend(src), get_legend(dst)
    missing = [t for t in src.tiles if t not in dst.tiles]
    if missing:
        raise ValueError(f"tiles {''.join(missing)!r} of {src.game} are not in {dst.game} ({dst.tiles})")
    table = np.array([dst.index(t) for t in src.tiles], dtype=np.uint8)
    return table[np.asarray(grid, dtype=np.intp)]


def pad_top(grids: np.ndarray, rows: int) -> np.ndarray:
    """(..., h, w) -> (..., rows, w): empty (background, index 0) rows added on top. Mario's 14-row windows
    become 16 x 16 blend units; the screen above them is sky."""
    g = np.asarray(grids)
    return np.pad(g, [(0, 0)] * (g.ndim - 2) + [(rows - g.shape[-2], 0), (0, 0)])


def legend_from_json(path: Path, game: str | None = None) -> Legend:
    """A VGLC legend file ({"tiles": {char: [properties...]}}) -> Legend; the first passable/empty tile
    becomes the background."""
    path = Path(path)
    try:
        tiles = json.loads(path.read_text(encoding="utf-8-sig"))["tiles"]
        items = [(k, [str(p) for p in v]) for k, v in tiles.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadLevel(path, f"not a VGLC legend JSON ({{\"tiles\": {{char: [properties]}}}}): {e}") from None
    bad = [k for k, _ in items if len(k) != 1 or not k.isprintable() or ord(k) > 255]
    if bad or not items:
        raise BadLevel(path, f"tile keys must be single printable characters; got {bad or 'none'}")
    empty = next((i for i, (_, p) in enumerate(items) if "empty" in p), 0)
    items.insert(0, items.pop(empty))
    return Legend(game or path.stem.lower(), "".join(k for k, _ in items), tuple(", ".join(p) for _, p in items))


def get_legend(game: str | Legend) -> Legend:
    if isinstance(game, Legend):
        return game
    if game in LEGENDS:
        return LEGENDS[game]
    if game.endswith(".json"):
        return legend_from_json(Path(game))
    raise ValueError(f"unknown game {game!r}; built in: {', '.join(LEGENDS)}; or give a VGLC legend .json")


# ---------------------------------------------------------------- text <-> grid

def level_to_grid(text: str | bytes, legend: Legend | str, path: str = "<level>") -> np.ndarray:
    """VGLC text -> uint8 (rows, cols) grid. Accepts CRLF/CR line ends, a UTF-8 BOM, a missing final
    newline and trailing blank lines; anything else wrong raises BadLevel naming line and column (columns
    count characters of the UTF-8 text, as an editor shows them, not bytes)."""
    legend = get_legend(legend)
    if isinstance(text, bytes):
        # surrogateescape: a byte that is not UTF-8 stays one character (U+DC80..U+DCFF), reported below
        text = text.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for r, row in enumerate(lines):
        if "\0" in row:
            raise BadLevel(path, "binary data (NUL byte): not a text level", r + 1, row.index("\0") + 1)
    if not lines:
        raise BadLevel(path, "empty level (no rows)")
    width = len(lines[0])
    table = legend.lookup()
    grid = np.empty((len(lines), width), dtype=np.uint8)
    for r, row in enumerate(lines):
        if len(row) != width:
            raise BadLevel(path, f"ragged rows: this row has {len(row)} tiles, the first has {width}", r + 1,
                           min(len(row), width) + 1)
        code = np.frombuffer(row.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)   # (width,) code points
        idx = np.where(code < 256, table[np.minimum(code, 255)], -1)
        if (idx < 0).any():
            c = int(np.argmax(idx < 0))
            ch = row[c]
            what = f"byte 0x{ord(ch) - 0xDC00:02x} (not UTF-8)" if 0xDC80 <= ord(ch) <= 0xDCFF else f"tile {ch!r}"
            raise BadLevel(path, f"{what} is not in the {legend.game} legend; known tiles: {legend.tiles}",
                           r + 1, c + 1)
        grid[r] = idx
    if width == 0:
        raise BadLevel(path, "empty rows", 1)
    return grid


def grid_to_level(grid: np.ndarray, legend: Legend | str) -> str:
    """(rows, cols) tile indices -> VGLC text, one line per row, final newline."""
    tiles = np.frombuffer(get_legend(legend).tiles.encode("latin-1"), dtype=np.uint8)
    rows = tiles[np.asarray(grid, dtype=np.intp)]
    return "".join(r.tobytes().decode("latin-1") + "\n" for r in rows)


def read_level(path: Path, legend: Legend | str) -> np.ndarray:
    """One level file -> grid, or BadLevel saying what is wrong with it. Opened as every input is
    (formats.files.open_regular): a link is refused, never read, so an error cannot quote what it points to."""
    path = Path(path)
    try:
        fh = open_regular(path)
    except Refused as e:
        raise BadLevel(path, str(e)) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_LEVEL_BYTES:
            raise BadLevel(path, f"{size} bytes: too big for a level (limit {MAX_LEVEL_BYTES})")
        try:
            data = fh.read(MAX_LEVEL_BYTES + 1)
        except OSError as e:
            raise BadLevel(path, f"unreadable ({e.strerror})") from None
    if len(data) > MAX_LEVEL_BYTES:
        raise BadLevel(path, f"too big for a level (limit {MAX_LEVEL_BYTES} bytes)")
    return level_to_grid(data, legend, str(path))


ANNOTATED = "_Annotated_Path"       # VGLC paths/NAME_Annotated_Path.txt: processed/NAME.txt, the path drawn in `x`


def annotation_copies(files: list[Path]) -> dict[Path, Path]:
    """{annotation: its level} for each VGLC `paths/*_Annotated_Path.txt` whose level (same name without the
    suffix) is among `files` too: a copy of that level with the path drawn over it, not a level of its own
    (a game folder would count every level twice). An annotation alone is a level like any other."""
    by_name = {p.name: p for p in files}
    return {p: by_name[p.stem[:-len(ANNOTATED)] + p.suffix] for p in files
            if p.stem.endswith(ANNOTATED) and p.stem[:-len(ANNOTATED)] + p.suffix in by_name}


def level_files(folder: Path, pattern: str = "*.txt") -> list[Path]:
    """Level files in `folder`, in natural order ("Level 2" before "Level 10"); legend/readme files skipped.
    Links are listed (read_level reports them), folders named *.txt are not."""
    files = [p for p in Path(folder).glob(pattern) if (p.is_file() or p.is_symlink()) and not p.is_dir()
             and p.stem.lower() != "readme"]
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)])


def grid_to_onehot(grid: np.ndarray, vocab: int) -> np.ndarray:
    """(..., rows, cols) indices -> (..., vocab, rows, cols) float32 one-hot."""
    onehot = np.eye(vocab, dtype=np.float32)[np.asarray(grid, dtype=np.intp)]     # (..., rows, cols, V)
    return np.moveaxis(onehot, -1, -3)


def onehot_to_grid(onehot: np.ndarray) -> np.ndarray:
    """(..., vocab, rows, cols) scores -> (..., rows, cols) uint8 argmax."""
    return np.asarray(onehot).argmax(-3).astype(np.uint8)


# ---------------------------------------------------------------- training units

def windows(grid: np.ndarray, width: int, stride: int = 1, axis: int = 1) -> np.ndarray:
    """Stride-`stride` windows along `axis` (1: columns, Mario; 0: rows, Kid Icarus bottom-up order is the
    caller's business): (rows, cols) -> (N, rows, width) or (N, width, cols). N = (len - width) // stride + 1."""
    if axis == 0:
        return windows(grid.T, width, stride, 1).transpose(0, 2, 1).copy()
    if grid.shape[1] < width:
        return np.empty((0, grid.shape[0], width), dtype=grid.dtype)
    view = np.lib.stride_tricks.sliding_window_view(grid, width, axis=1)[:, ::stride]   # (rows, N, width)
    return np.ascontiguousarray(view.transpose(1, 0, 2))


ZELDA_ROOM = (16, 11)           # rows x cols of one room block in the file (the NES screen transposed)


def zelda_rooms(grid: np.ndarray, legend: Legend | str = "zelda") -> np.ndarray:
    """A Zelda dungeon map -> (N, 16, 11) room blocks with a real interior (all-void slots and rooms whose
    12 x 7 interior is all `-`, the unmapped dark rooms, are dropped)."""
    legend = get_legend(legend)
    h, w = ZELDA_ROOM
    if grid.shape[0] % h or grid.shape[1] % w:
        raise ValueError(f"Zelda map {grid.shape} is not a grid of {h} x {w} rooms")
    blocks = grid.reshape(grid.shape[0] // h, h, grid.shape[1] // w, w).transpose(0, 2, 1, 3).reshape(-1, h, w)
    void = legend.index("-")
    keep = ~(blocks[:, 2:14, 2:9] == void).all((1, 2))
    return blocks[keep]


# Training-unit conventions per game (notes Table B).
@dataclass(frozen=True)
class GameSpec:
    unit: str                     # how levels become training units: window | vwindow | level | room
    shape: tuple[int, int]        # unit (rows, cols)
    pattern: str = "*.txt"        # level files in the data folder


GAMES = {
    "mario": GameSpec("window", (14, 28)),                 # 14 x 16 also usual: --width 16
    "kid_icarus": GameSpec("vwindow", (16, 16)),           # Sarkar et al.: vertical stride-1 windows
    "lode_runner": GameSpec("level", (22, 32)),            # whole levels
    "zelda": GameSpec("room", (16, 11), "tloz*.txt"),      # room blocks, dark rooms dropped
}
BLEND_SHAPE = (16, 16)          # blend units: Mario 16-column windows with 2 sky rows on top, Kid Icarus 16 x 16


def game_spec(game: str, width: int | None = None) -> GameSpec:
    """The convention of a built-in game; any other game (a VGLC legend .json): stride-1 windows `width`
    columns wide when a width is given, else whole levels (all of the first level's shape)."""
    if game in GAMES:
        return GAMES[game]
    return GameSpec("window", (0, width)) if width else GameSpec("level", (0, 0))


def cut_units(game: str, grid: np.ndarray, width: int | None = None) -> np.ndarray:
    """One level -> its training units (N, rows, cols) by the game's convention (game_spec)."""
    spec = game_spec(game, width)
    rows, cols = spec.shape
    # windows keep the level's other side whole: it must be the game's (a 1-row Mario level is no level)
    if spec.unit == "window" and rows and grid.shape[0] != rows:
        raise ValueError(f"a {game} level is {rows} rows high, this one is {grid.shape[0]}")
    if spec.unit == "vwindow" and cols and grid.shape[1] != cols:
        raise ValueError(f"a {game} level is {cols} columns wide, this one is {grid.shape[1]}")
    if spec.unit == "window":
        return windows(grid, width or cols, 1, axis=1)
    if spec.unit == "vwindow":
        return windows(grid, width or rows, 1, axis=0)
    if spec.unit == "room":
        return zelda_rooms(grid)
    if rows and grid.shape != spec.shape:
        raise ValueError(f"a {game} level is {rows} x {cols}, this one is {grid.shape[0]} x {grid.shape[1]}")
    return grid[None]


# ---------------------------------------------------------------- the mario-gpt corpus

MARIO_GPT_SMB = (("1-1", 202), ("1-2", 158), ("1-3", 150), ("2-1", 197), ("3-1", 197), ("3-3", 149), ("4-1", 222),
                 ("4-2", 187), ("5-1", 198), ("5-3", 150), ("6-1", 184), ("6-2", 215), ("6-3", 165), ("7-1", 176),
                 ("8-1", 373))
MARIO_GPT_SMB_START = 4431      # columns 0-4430 are the 22 SMB2J levels; each level lost its first 4 columns


def mario_gpt_file() -> Path:
    """`mario_gpt/level.py` of the installed mario-gpt wheel, located without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("mario_gpt")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the mario-gpt package is not installed: pip install --no-deps mario-gpt")
    path = Path(list(spec.submodule_search_locations)[0]) / "level.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the mario-gpt package")
    return path


def mario_gpt_levels(path: Path | None = None) -> list[tuple[str, np.ndarray]]:
    """The 15 Super Mario Bros levels in mario-gpt's string constant (read with `ast`, never imported):
    [(name, grid)], path marks `x` turned back into empty tiles (tiles under the path are lost)."""
    path = Path(path or mario_gpt_file())
    tree = ast.parse(path.read_text(encoding="utf-8"))
    text = next((n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", "") == "FULL_LEVEL_STR_WITH_PATHS" for t in n.targets)
                 and isinstance(n.value, ast.Constant)), None)
    if text is None:
        raise BadLevel(path, "no FULL_LEVEL_STR_WITH_PATHS string constant (mario-gpt 0.1.3 layout expected)")
    grid = level_to_grid(text.strip("\n"), "mario", str(path))
    levels, x = [], MARIO_GPT_SMB_START
    for name, width in MARIO_GPT_SMB:
        levels.append((f"mario-{name}", grid[:, x:x + width - 4]))
        x += width - 4
    if x != grid.shape[1]:
        raise BadLevel(path, f"expected {x} columns in the level string, found {grid.shape[1]}")
    return levels


# ---------------------------------------------------------------- rendering

TILE_PX = 8
# Per game and tile: (background RGB, foreground RGB, glyph). Glyphs are drawn below, so every tile reads
# at a glance without any game's sprites.
_SKY, _DARK = (146, 196, 255), (24, 24, 32)
STYLES: dict[str, dict[str, tuple]] = {
    "mario": {"-": (_SKY, _SKY, "fill"), "X": ((160, 82, 45), (96, 48, 24), "ground"),
              "S": ((200, 96, 48), (90, 40, 20), "brick"), "?": ((240, 190, 40), (120, 60, 0), "question"),
              "Q": ((150, 110, 70), (90, 60, 30), "frame"), "E": (_SKY, (200, 30, 30), "enemy"),
              "<": (_SKY, (40, 170, 60), "pipe_tl"), ">": (_SKY, (40, 170, 60), "pipe_tr"),
              "[": (_SKY, (30, 140, 50), "pipe_l"), "]": (_SKY, (30, 140, 50), "pipe_r"),
              "o": (_SKY, (250, 210, 30), "coin"), "B": ((40, 40, 40), (220, 220, 220), "cannon"),
              "b": ((60, 60, 60), (30, 30, 30), "fill")},
    "kid_icarus": {"-": ((20, 20, 60), (20, 20, 60), "fill"), "#": ((150, 120, 90), (90, 70, 50), "ground"),
                   "T": ((20, 20, 60), (200, 200, 120), "platform"), "M": ((20, 20, 60), (120, 220, 240), "platform"),
                   "H": ((20, 20, 60), (230, 40, 40), "spikes"), "D": ((120, 70, 30), (240, 200, 80), "door")},
    "lode_runner": {".": (_DARK, _DARK, "fill"), "b": ((170, 80, 50), (90, 40, 20), "brick"),
                    "#": (_DARK, (230, 230, 230), "ladder"), "B": ((120, 120, 130), (70, 70, 80), "frame"),
                    "-": (_DARK, (200, 200, 200), "rope"), "G": (_DARK, (250, 210, 30), "coin"),
                    "E": (_DARK, (220, 40, 40), "enemy"), "M": (_DARK, (60, 200, 255), "enemy")},
    "zelda": {"F": ((70, 110, 160), (60, 95, 140), "fill"), "W": ((40, 60, 90), (20, 30, 50), "brick"),
              "B": ((70, 110, 160), (30, 50, 80), "frame"), "P": ((30, 60, 200), (90, 140, 250), "water"),
              "D": ((40, 60, 90), (10, 10, 10), "door"), "O": ((70, 110, 160), (90, 140, 250), "water"),
              "M": ((70, 110, 160), (220, 40, 40), "enemy"), "I": ((30, 60, 200), (30, 50, 80), "frame"),
              "S": ((70, 110, 160), (240, 240, 240), "stairs"), "-": ((0, 0, 0), (0, 0, 0), "fill")},
}
# A blend draws each tile as its own game does; the shared background as the first game's (Mario's sky).
for _name, (_a, _b) in BLENDS.items():
    STYLES[_name] = {**STYLES[_b], **STYLES[_a]}


def _glyph(draw: ImageDraw.ImageDraw, kind: str, fg, s: int) -> None:
    e = s - 1
    if kind == "ground":
        draw.rectangle([0, 0, e, 1], fill=fg)
        draw.point([(2, 4), (5, 6), (6, 3)], fill=fg)
    elif kind == "brick":
        for y in (0, s // 2):
            draw.line([0, y, e, y], fill=fg)
        draw.line([s // 2, 0, s // 2, s // 2], fill=fg)
        draw.line([1, s // 2, 1, e], fill=fg)
    elif kind == "question":
        draw.rectangle([0, 0, e, e], outline=fg)
        draw.line([3, 2, 5, 2], fill=fg), draw.line([5, 2, 5, 4], fill=fg), draw.point([(4, 4), (4, 6)], fill=fg)
    elif kind == "frame":
        draw.rectangle([0, 0, e, e], outline=fg)
        draw.line([0, 0, e, e], fill=fg)
    elif kind == "enemy":
        draw.ellipse([1, 1, e - 1, e - 1], fill=fg)
        draw.point([(3, 3), (5, 3)], fill=(255, 255, 255))
    elif kind in ("pipe_tl", "pipe_tr"):
        draw.rectangle([0, 1, e, e - 1], fill=fg)
        draw.line([0 if kind == "pipe_tl" else e, 1, 0 if kind == "pipe_tl" else e, e - 1], fill=(0, 80, 0))
    elif kind in ("pipe_l", "pipe_r"):
        draw.rectangle([1 if kind == "pipe_l" else 0, 0, e if kind == "pipe_l" else e - 1, e], fill=fg)
    elif kind == "coin":
        draw.ellipse([2, 1, e - 2, e - 1], fill=fg)
    elif kind == "cannon":
        draw.ellipse([1, 1, e - 1, e - 1], outline=fg)
    elif kind == "platform":
        draw.rectangle([0, 0, e, 2], fill=fg)
    elif kind == "spikes":
        draw.polygon([(0, e), (s // 4, 2), (s // 2, e), (3 * s // 4, 2), (e, e)], fill=fg)
    elif kind == "door":
        draw.rectangle([1, 1, e - 1, e], fill=fg)
    elif kind == "ladder":
        draw.line([1, 0, 1, e], fill=fg), draw.line([e - 1, 0, e - 1, e], fill=fg)
        for y in range(1, s, 3):
            draw.line([1, y, e - 1, y], fill=fg)
    elif kind == "rope":
        draw.line([0, 1, e, 1], fill=fg)
    elif kind == "water":
        for y in (2, 5):
            draw.line([0, y, s // 2, y + 1, e, y], fill=fg)
    elif kind == "stairs":
        for i, y in enumerate(range(1, s, 2)):
            draw.line([i * 2, y, e, y], fill=fg)


def tile_sprites(legend: Legend | str, px: int = TILE_PX) -> np.ndarray:
    """(vocab, px, px, 3) uint8 drawn tiles; unknown games get distinct flat colours."""
    legend = get_legend(legend)
    style = STYLES.get(legend.game, {})
    out = np.zeros((legend.vocab, px, px, 3), dtype=np.uint8)
    for i, t in enumerate(legend.tiles):
        if t in style:
            bg, fg, kind = style[t]
        else:                                   # golden-angle hues: neighbours in the legend differ
            h = (i * 0.618034) % 1.0
            bg = fg = tuple(int(255 * (0.5 + 0.5 * math.cos(2 * math.pi * (h + k / 3)))) for k in range(3))
            kind = "fill"
        im = Image.new("RGB", (8, 8), bg)
        _glyph(ImageDraw.Draw(im), kind, fg, 8)
        out[i] = np.asarray(im.resize((px, px), Image.NEAREST))
    return out


def render_level(grid: np.ndarray, legend: Legend | str, px: int = TILE_PX) -> np.ndarray:
    """(rows, cols) grid -> (rows * px, cols * px, 3) uint8 picture."""
    sprites = tile_sprites(legend, px)[np.asarray(grid, dtype=np.intp)]     # (rows, cols, px, px, 3)
    rows, cols = grid.shape
    return sprites.transpose(0, 2, 1, 3, 4).reshape(rows * px, cols * px, 3)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def contact_sheet(grids: list[np.ndarray], legend: Legend | str, labels: list[str] | None = None,
                  columns: int | None = None, px: int = TILE_PX, gap: int = 6) -> bytes:
    """A PNG of several levels in a grid of cells (each cell as large as the largest level), labelled."""
    pics = [render_level(g, legend, px) for g in grids]
    if not pics:
        raise ValueError("contact sheet of no levels")
    h, w = max(p.shape[0] for p in pics), max(p.shape[1] for p in pics)
    columns = columns or max(1, min(len(pics), round(math.sqrt(len(pics) * h / w * 1.5))))
    label_h = 12 if labels else 0
    nrows = -(-len(pics) // columns)
    sheet = Image.new("RGB", (columns * (w + gap) + gap, nrows * (h + gap + label_h) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, p in enumerate(pics):
        x, y = gap + (i % columns) * (w + gap), gap + (i // columns) * (h + gap + label_h)
        if labels:
            draw.text((x, y), labels[i][:max(4, w // 6)], fill=(0, 0, 0))
        sheet.paste(Image.fromarray(p), (x, y + label_h))
    return png_bytes(np.asarray(sheet))


# ---------------------------------------------------------------- sample metrics (notes §3)

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _flat(grids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(grids, dtype=np.uint8).reshape(len(grids), -1))


def copies(samples: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(N,) bool: each sample is identical to some training unit."""
    seen = {r.tobytes() for r in _flat(train)}
    return np.array([r.tobytes() in seen for r in _flat(samples)], dtype=bool)


def novelty(samples: np.ndarray, train: np.ndarray, chunk: int = 256) -> dict:
    """Share of samples identical to no training unit, and the mean over samples of the normalised Hamming
    distance to the nearest training unit (same shape required)."""
    s, t = _flat(samples), _flat(train)
    novel = int((~copies(samples, train)).sum())
    nearest = np.concatenate([(s[i:i + chunk, None, :] != t[None]).mean(2).min(1) for i in range(0, len(s), chunk)])
    return {"novel": novel / len(s), "nn_hamming": float(nearest.mean())}


def diversity(samples: np.ndarray, chunk: int = 256) -> dict:
    """Mean pairwise normalised Hamming distance within the samples, and the share of distinct samples."""
    s = _flat(samples)
    n = len(s)
    total = sum(float((s[i:i + chunk, None, :] != s[None]).mean(2).sum()) for i in range(0, n, chunk))
    pairs = n * (n - 1)
    return {"pairwise_hamming": total / pairs if pairs else 0.0, "distinct": len({r.tobytes() for r in s}) / n}


def game_tile_shares(grids: np.ndarray, blend: str) -> dict[str, float]:
    """Union-legend grids of a blend: per game, the share of non-background cells holding a tile only that
    game has (Mario: X S ? ... ; Kid Icarus: # T M H D). Shows which game a blended sample looks like."""
    legend = get_legend(blend)
    a, b = (get_legend(g) for g in BLENDS[blend])
    g = np.asarray(grids, dtype=np.intp)
    filled = max(int((g != 0).sum()), 1)
    return {x.game: float(legend.mask("".join(t for t in x.tiles if t not in y.tiles))[g].sum() / filled)
            for x, y in ((a, b), (b, a))}


TPKL_EPS = 1e-5     # added to every pattern count of Q before normalising (project choice, notes §3)


def _patterns(grids: list[np.ndarray] | np.ndarray, k: int, base: int = 256) -> dict[bytes, int]:
    """Counts of every k x k window (stride 1) over all grids (tiles < base), keyed by the pattern's code."""
    if isinstance(grids, np.ndarray):          # a batch of equal units: one view, (N, rows, cols) -> (M, k*k)
        view = np.lib.stride_tricks.sliding_window_view(grids.astype(np.uint8), (k, k), axis=(1, 2))
        parts = [view.reshape(-1, k * k)]
    else:
        parts = [np.lib.stride_tricks.sliding_window_view(np.asarray(g, dtype=np.uint8), (k, k)).reshape(-1, k * k)
                 for g in grids if g.shape[0] >= k and g.shape[1] >= k]             # (n_windows, k*k) each
    if not parts:
        return {}
    win = np.concatenate(parts)
    if base ** (k * k) < 2 ** 62:            # one int64 per pattern: np.unique sorts these fast
        codes = win.astype(np.int64) @ (base ** np.arange(k * k, dtype=np.int64))
        keys, counts = np.unique(codes, return_counts=True)
        return {int(key).to_bytes(8, "little"): int(c) for key, c in zip(keys, counts)}
    flat = np.ascontiguousarray(win).view(f"V{k * k}").ravel()                    # one opaque item per pattern
    keys, counts = np.unique(flat, return_counts=True)
    return {key.tobytes(): int(c) for key, c in zip(keys, counts)}


def tpkl(train: list[np.ndarray] | np.ndarray, samples: list[np.ndarray] | np.ndarray, k: int = 2,
         eps: float = TPKL_EPS) -> float:
    """Tile-pattern KL divergence D(P || Q) of k x k patterns (Lucas & Volz 2019): P from the training
    units, Q from the samples with `eps` added to every count (over the union of patterns) before normalising."""
    base = 1 + max(int(np.max(g)) for grids in (train, samples)       # the same pattern codes on both sides
                   for g in ([grids] if isinstance(grids, np.ndarray) else grids))
    p, q = _patterns(train, k, base), _patterns(samples, k, base)
    keys = set(p) | set(q)
    p_tot = sum(p.values())
    q_tot = sum(q.values()) + eps * len(keys)
    return float(sum(c / p_tot * math.log((c / p_tot) / ((q.get(key, 0) + eps) / q_tot)) for key, c in p.items()))
