"""Mixed numeric / categorical records (network connections: NSL-KDD style) -> feature vectors in [0, 1].

    read_records   a comma-separated file -> names, rows (lists of strings) and the line of each row; the column
                   names come from `columns.txt` beside the file (NSL-KDD's layout; a first line equal to them is
                   skipped), else from the first line
    fit_encoding   min-max on normal training rows only; over the whole training file (labels unused): a column
                   with any non-numeric value is categorical (one-hot over its categories, sorted), a constant
                   one is dropped, log1p where the maximum exceeds 1 (shared/notes/anomaly.md, section 3)
    encode         rows -> (N, D) float32, the categories not seen in fitting (all zeros in their one-hot,
                   counted per record) and the rows that could not be encoded (line and reason)

An encoding is a plain dict (JSON), so a detector folder describes itself.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np

from formats.files import Refused, open_regular


def read_records(path: str | Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(names, rows, line numbers); a row with the wrong number of fields is kept (encode reports it). Raises
    ValueError (one line naming the file) for a file that is not UTF-8 text, has no record, or none of the
    width its names give."""
    path = Path(path)
    beside = path.parent / "columns.txt"
    try:
        with open_regular(path) as f:
            text = f.read().decode("utf-8-sig")
    except Refused as e:
        raise ValueError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    rows = [(i, r) for i, r in enumerate(csv.reader(text.splitlines()), 1) if r]
    if beside.is_file():
        names = [n.strip() for n in beside.read_text().replace(",", "\n").split() if n.strip()]
        source = "columns.txt"
        if rows and [v.strip().lower() for v in rows[0][1]] == [n.lower() for n in names]:
            rows = rows[1:]                             # a header line of its own as well: not a record
    elif rows:
        names, rows, source = [n.strip() for n in rows[0][1]], rows[1:], "its header line"
        if any(_number(n) is not None for n in names):  # NSL-KDD as shipped: no header, no columns.txt
            raise ValueError(f"{path}: the first line looks like data, not a header ({', '.join(names[:4])}, ...); "
                             f"give the file a header line naming its columns, or put a columns.txt (one name a "
                             f"line) beside it")
    if not rows:
        raise ValueError(f"{path}: no records")
    if not any(len(r) == len(names) for _, r in rows):
        width, n = Counter(len(r) for _, r in rows).most_common(1)[0]
        raise ValueError(f"{path}: no usable record: {n:,} rows have {width} fields, {source} names {len(names)} "
                         f"columns")
    return names, [r for _, r in rows], [i for i, _ in rows]


def _number(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def fit_encoding(names: list[str], rows: list[list[str]], ignore: tuple[str, ...] = (),
                 every: list[list[str]] | None = None) -> dict:
    """The encoding fitted on `rows` (normal records only), leaving out the `ignore` columns (label, metadata).
    `every` (default `rows`): all the training file's records, labels unused: which columns are categorical,
    their categories, and which are constant (dropped). A numeric column constant on `rows` only keeps unit
    scale (x - its value): attacks may vary where normal traffic does not."""
    every = rows if every is None else every
    columns = []
    for j, name in enumerate(names):
        if name in ignore:
            continue
        values = [r[j].strip() for r in every if len(r) == len(names)]
        nums = [_number(v) for v in values]
        if any(x is None for x in nums):
            columns.append({"name": name, "index": j, "categories": sorted(set(values))})
            continue
        if min(nums) == max(nums):
            continue                                            # constant in the file: carries nothing
        x = np.asarray([_number(r[j].strip()) for r in rows if len(r) == len(names)])
        log = bool(max(nums) > 1 and min(nums) >= 0)
        x = np.log1p(x) if log else x
        lo, hi = float(x.min()), float(x.max())
        columns.append({"name": name, "index": j, "log": log, "lo": lo, "hi": hi if hi > lo else lo + 1.0})
    return {"names": list(names), "columns": columns}


def feature_names(encoding: dict) -> list[str]:
    """One name per feature: `column` for a numeric, `column=value` for a one-hot."""
    return [n for c in encoding["columns"]
            for n in ([f"{c['name']}={v}" for v in c["categories"]] if "categories" in c else [c["name"]])]


def encode(encoding: dict, rows: list[list[str]], lines: list[int]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """rows -> (features (N, D) float32, unseen categories per row (N,), bad rows [{line, reason}]). A bad row
    (wrong field count, a non-number in a numeric column) is encoded as NaN so the output keeps one row per record.
    Numbers outside the fitted range map outside [0, 1]: that is what an anomaly looks like."""
    width = len(encoding["names"])
    blocks, unseen, bad = [], np.zeros(len(rows), np.int64), []
    ok = np.array([len(r) == width for r in rows])
    for i in np.flatnonzero(~ok):
        bad.append({"line": lines[i], "reason": f"{len(rows[i])} fields, expected {width}"})
    for c in encoding["columns"]:
        col = [r[c["index"]].strip() if good else "" for r, good in zip(rows, ok)]
        if "categories" in c:
            index = {v: k for k, v in enumerate(c["categories"])}
            block = np.zeros((len(rows), len(index)), np.float32)
            for i, v in enumerate(col):
                if v in index:
                    block[i, index[v]] = 1.0
                elif ok[i]:
                    unseen[i] += 1                             # an unseen category: all zeros, counted
        else:
            x = np.array([_number(v) if good else None for v, good in zip(col, ok)], dtype=float)
            for i in np.flatnonzero(ok & np.isnan(x)):
                bad.append({"line": lines[i], "reason": f"{c['name']}: {col[i]!r} is not a number"})
            if c["log"]:
                x = np.log1p(np.maximum(x, 0))
            block = ((x - c["lo"]) / (c["hi"] - c["lo"]))[:, None].astype(np.float32)
        blocks.append(block)
    x = np.concatenate(blocks, 1) if blocks else np.zeros((len(rows), 0), np.float32)
    bad_lines = {b["line"] for b in bad}
    x[[ln in bad_lines for ln in lines]] = np.nan
    return x, unseen, sorted(bad, key=lambda b: b["line"])
