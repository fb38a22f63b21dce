"""Token piano rolls <-> MIDI files (mido) and piano-roll PNGs (Pillow), 16 steps per 4/4 bar.

A roll is an int array (voices, steps) of tokens, MusicVAE style (Roberts et al. 2018) but with an explicit rest:
    REST = 0   nothing sounds in this voice at this step
    HOLD = 1   the note of the previous step goes on
    2 + k      a new note of MIDI pitch enc.lo + k starts here
so a repeated note and a held note differ, and every window is a small categorical image for a conv VAE.
Two encodings: `melody` (1 voice, MIDI 48-83) and `chorale` (4 voices S, A, T, B, MIDI 36-81, Coconet's range).

MIDI files are untrusted input: `read_midi` applies the policy of shared/notes/reliability.md section 2 (size and
message caps before and after parsing, every exception -> `BadMidi` with a one-line reason).
"""

from __future__ import annotations

import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import mido
import numpy as np
from PIL import Image, ImageDraw, ImageFont

REST, HOLD, OFFSET = 0, 1, 2          # token ids; pitch p is token OFFSET + p - enc.lo
STEPS_PER_BEAT = 4                    # 16th-note grid
MIDI_SUFFIXES = frozenset({".mid", ".midi", ".smf"})
MAX_BYTES = 1 << 20                   # 1 MiB: a 200k-message file parses in ~3 s of pure Python
MAX_MESSAGES = 200_000
MAX_SECONDS = 1800.0                  # longer "music" is a broken delta time (a 41-byte VLQ reads as 1e83 s)


@dataclass(frozen=True)
class Encoding:
    name: str
    voices: int
    lo: int                           # lowest MIDI pitch
    hi: int                           # highest MIDI pitch (inclusive)
    programs: tuple[int, ...]         # default General MIDI program per voice (0-based)

    @property
    def vocab(self) -> int:
        return OFFSET + self.hi - self.lo + 1


# General MIDI Level 1 program names, 0-based (the MIDI Association's GM 1 sound set), so `--program flute` works.
GM_PROGRAMS = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano", "Electric Piano 1",
    "Electric Piano 2", "Harpsichord", "Clavinet", "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba",
    "Xylophone", "Tubular Bells", "Dulcimer", "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ",
    "Reed Organ", "Accordion", "Harmonica", "Tango Accordion", "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)",
    "Electric Guitar (jazz)", "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics", "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)",
    "Fretless Bass", "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2", "Violin", "Viola", "Cello",
    "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani", "String Ensemble 1",
    "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs", "Synth Voice",
    "Orchestra Hit", "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1",
    "Synth Brass 2", "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon",
    "Clarinet", "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)", "Pad 1 (new age)", "Pad 2 (warm)",
    "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)", "FX 6 (goblins)",
    "FX 7 (echoes)", "FX 8 (sci-fi)", "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause",
    "Gunshot")


def parse_program(text: str | int) -> int:
    """A General MIDI program, 0-based, from its number or its name, case and punctuation aside: the exact name
    ("church organ"), else the first whose name holds it as whole words ("bass" -> 32 Acoustic Bass, "choir" -> 52
    Choir Aahs, "piano" -> 0), else the first whose name starts with it, else the first that contains it."""
    text = str(text).strip()
    if text.isdigit():
        if int(text) < len(GM_PROGRAMS):
            return int(text)
        raise ValueError(f"program {text}: General MIDI programs are 0-127")
    words = lambda t: " " + " ".join(re.sub(r"[^a-z0-9+]+", " ", t.lower()).split()) + " "  # noqa: E731
    want, names = words(text), [words(n) for n in GM_PROGRAMS]
    for match in (lambda n: n == want, lambda n: want in n, lambda n: n.startswith(want[:-1]),
                  lambda n: want.strip() in n):
        hits = [i for i, n in enumerate(names) if want.strip() and match(n)]
        if hits:
            return hits[0]
    raise ValueError(f"program {text!r}: not a General MIDI program number (0-127) or name; "
                     "e.g. flute, piano, violin, choir, trumpet, clarinet, 'string ensemble 1'")


MELODY = Encoding("melody", 1, 48, 83, (73,))                   # flute
CHORALE = Encoding("chorale", 4, 36, 81, (52, 52, 52, 52))      # choir aahs, one track per voice
ENCODINGS = {e.name: e for e in (MELODY, CHORALE)}


class BadMidi(ValueError):
    """A file that cannot be read as music; str(e) == f"{path}: {reason}"."""

    def __init__(self, path, reason: str):
        super().__init__(path, reason)           # args kept picklable (Prefect, process pools)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# ---------------------------------------------------------------- notes <-> rolls
# notes: int array (N, 4) of (voice, onset step, duration in steps, MIDI pitch)

def notes_to_roll(notes: np.ndarray, steps: int, enc: Encoding) -> np.ndarray:
    """Notes -> (voices, steps) int64 tokens. A later onset cuts the note before it; of notes starting together
    in one voice the highest wins (skyline); pitches outside [lo, hi] move by octaves into the range."""
    roll = np.full((enc.voices, steps), REST, dtype=np.int64)
    notes = np.asarray(notes, dtype=np.int64).reshape(-1, 4)
    order = np.lexsort((notes[:, 3], notes[:, 1], notes[:, 0]))   # by voice, onset, then pitch (highest last)
    for v, on, dur, pitch in notes[order]:
        if not 0 <= v < enc.voices or on >= steps or on < 0:
            continue
        pitch = fold_pitch(int(pitch), enc)
        end = min(steps, on + max(1, dur))
        roll[v, on] = OFFSET + pitch - enc.lo
        roll[v, on + 1:end] = HOLD
    return roll


def skyline(notes: np.ndarray) -> np.ndarray:
    """Notes of several parts (N, 4) -> one voice's notes: each part is a line (a later onset cuts the note before
    it; of notes starting together the highest), and at each step the highest line sounding is the melody. A note
    starts where its line's note starts or where the melody moves to another pitch; a lower part's notes never cut
    into a higher one that still sounds."""
    notes = np.asarray(notes, dtype=np.int64).reshape(-1, 4)
    if not len(notes):
        return notes
    steps = int((notes[:, 1] + notes[:, 2]).max())
    parts = int(notes[:, 0].max()) + 1
    pitch = np.full((parts, steps), -1, dtype=np.int64)
    start = np.zeros((parts, steps), dtype=bool)
    for v, on, dur, p in notes[np.lexsort((notes[:, 3], notes[:, 1], notes[:, 0]))]:
        pitch[v, on:on + dur] = p                              # later and higher notes overwrite
        start[v, on:on + dur] = False
        start[v, on] = True
    line = pitch.argmax(0)
    top = pitch[line, np.arange(steps)]
    onset = (top >= 0) & (start[line, np.arange(steps)] | (top != np.r_[-1, top[:-1]]))
    ons = np.flatnonzero(onset)
    ends = np.r_[ons[1:], steps]
    out = []
    for on, nxt in zip(ons, ends):
        silent = np.flatnonzero(top[on:nxt] < 0)
        out.append((0, on, (silent[0] if len(silent) else nxt - on), top[on]))
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def fold_pitch(pitch: int, enc: Encoding) -> int:
    while pitch < enc.lo:
        pitch += 12
    while pitch > enc.hi:
        pitch -= 12
    return pitch


def sounding(roll: np.ndarray, lo: int) -> np.ndarray:
    """(voices, steps) tokens -> the MIDI pitch sounding at each step, -1 where silent (a HOLD after a rest is
    silent: a decoder may produce one)."""
    roll = np.asarray(roll)
    onset = roll >= OFFSET
    idx = np.where(onset | (roll == REST), np.arange(roll.shape[-1]), 0)
    last = np.maximum.accumulate(idx, axis=-1)                 # last onset or rest at or before each step
    tok = np.take_along_axis(roll, last, axis=-1)
    # a leading HOLD has no onset before it: idx 0 is then the HOLD itself -> silent
    return np.where(tok >= OFFSET, tok - OFFSET + lo, -1)


def canonical(roll: np.ndarray) -> np.ndarray:
    """The same music with every orphan HOLD (one after a rest, or at the start) made a REST: what a roll
    reads back as from MIDI, and the form decoded samples are compared in."""
    roll = np.asarray(roll)
    held = (roll == HOLD) & (sounding(roll, 0) < 0)
    return np.where(held, REST, roll)


def roll_to_notes(roll: np.ndarray, lo: int) -> np.ndarray:
    """(voices, steps) tokens -> notes (N, 4) of (voice, onset, duration, pitch), sorted by onset then voice."""
    roll = np.asarray(roll)
    pitch = sounding(roll, lo)
    out = []
    for v in range(roll.shape[0]):
        starts = np.flatnonzero(roll[v] >= OFFSET)
        for s in starts:
            e = s + 1
            while e < roll.shape[1] and roll[v, e] == HOLD:
                e += 1
            out.append((v, s, e - s, pitch[v, s]))
    notes = np.array(out, dtype=np.int64).reshape(-1, 4)
    return notes[np.lexsort((notes[:, 0], notes[:, 1]))]


def cut(roll: np.ndarray, start: int, stop: int, lo: int) -> np.ndarray:
    """roll[:, start:stop] with a note already sounding at `start` turned into an onset there (so every window
    stands alone: no leading HOLD)."""
    window = roll[:, start:stop].copy()
    if start > 0:
        pitch = sounding(roll[:, :start + 1], lo)[:, -1]
        held = window[:, 0] == HOLD
        window[held, 0] = np.where(pitch[held] >= 0, pitch[held] - lo + OFFSET, REST)
    else:
        window[window[:, 0] == HOLD, 0] = REST
    return window


def transpose(roll: np.ndarray, shift: int, enc: Encoding) -> np.ndarray | None:
    """Shift every pitch by `shift` semitones; None when a note would leave [lo, hi] (DeepBach's rule)."""
    onset = roll >= OFFSET
    if not onset.any():
        return roll.copy()
    p = roll[onset] + shift
    if p.min() < OFFSET or p.max() > OFFSET + enc.hi - enc.lo:
        return None
    out = roll.copy()
    out[onset] = p
    return out


# ---------------------------------------------------------------- MIDI out

def is_key_signature(name: str) -> bool:
    """Whether mido writes `name` as a key signature ("C", "F#m", "Bb", "Ebm"; not "A#", 10 sharps)."""
    try:
        mido.MetaMessage("key_signature", key=name)
    except Exception:                                          # KeySignatureError, ValueError
        return False
    return True


def roll_to_midi(roll: np.ndarray, enc: Encoding, tempo: float = 100.0, programs: tuple[int, ...] | None = None,
                 time_signature: tuple[int, int] = (4, 4), ticks_per_beat: int = 480, velocity: int = 80,
                 title: str | None = None, key: str | None = None) -> bytes:
    """Encode a type-1 MIDI file (bytes; the caller writes them atomically): a conductor track (tempo, time
    signature, title, and the key signature when `key` is given: "D", "F#m", "Bb" as mido spells them; without
    one, notation apps show C major) and one track per voice on its own channel with a program change. Note-offs
    come before note-ons at the same tick (else readers that close the latest note_on turn a repeated pitch into a
    0-length note); downbeats are accented a little (velocity 92 / 86 / 80 on bar / beat / other onsets)."""
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[0] != enc.voices:
        raise ValueError(f"roll shape {roll.shape} does not match {enc.name} ({enc.voices} voices, steps)")
    if ticks_per_beat % STEPS_PER_BEAT:
        raise ValueError(f"ticks_per_beat {ticks_per_beat} is not a multiple of {STEPS_PER_BEAT} (16th grid)")
    if not 20 <= tempo <= 400:
        raise ValueError(f"tempo {tempo} bpm is outside 20-400")
    programs = tuple(programs if programs is not None else enc.programs)
    programs = programs * enc.voices if len(programs) == 1 else programs
    tick = ticks_per_beat // STEPS_PER_BEAT
    bar = STEPS_PER_BEAT * 4 * time_signature[0] // time_signature[1]
    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    meta = mido.MidiTrack([mido.MetaMessage("track_name", name=title or f"aeflow {enc.name}", time=0),
                           mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0),
                           mido.MetaMessage("time_signature", numerator=time_signature[0],
                                            denominator=time_signature[1], time=0)])
    if key is not None:
        if not is_key_signature(key):
            raise ValueError(f"key {key!r}: not a key signature (e.g. C, F#m, Bb, Ebm)")
        meta.append(mido.MetaMessage("key_signature", key=key, time=0))
    mid.tracks.append(meta)
    names = ("soprano", "alto", "tenor", "bass") if enc.voices == 4 else ("melody",)
    notes = roll_to_notes(roll, enc.lo)
    for v in range(enc.voices):
        channel = v if v < 9 else v + 1                        # channel 9 (10 in 1-based) is drums
        events = []                                            # (abs tick, order, message); offs (0) before ons (1)
        for _, on, dur, pitch in notes[notes[:, 0] == v]:
            vel = min(127, velocity + (12 if on % bar == 0 else 6 if on % STEPS_PER_BEAT == 0 else 0))
            events.append((int(on) * tick, 1, mido.Message("note_on", channel=channel, note=int(pitch), velocity=vel)))
            events.append((int(on + dur) * tick, 0, mido.Message("note_off", channel=channel, note=int(pitch), velocity=0)))
        events.sort(key=lambda e: (e[0], e[1]))
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=names[v] if v < len(names) else f"voice {v}"),
                                mido.Message("program_change", channel=channel, program=int(programs[v]), time=0)])
        now = 0
        for t, _, msg in events:                               # integer delta ticks (mido refuses floats)
            track.append(msg.copy(time=t - now))
            now = t
        track.append(mido.MetaMessage("end_of_track", time=max(0, roll.shape[1] * tick - now)))
        mid.tracks.append(track)
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


# ---------------------------------------------------------------- MIDI in

@dataclass
class MidiClip:
    roll: np.ndarray                          # (voices, steps) tokens
    tempo: float                              # bpm of the first tempo event (120 when the file has none)
    time_signature: tuple[int, int]
    programs: tuple[int, ...]                 # per voice, 0-based; 0 when the file has none
    tracks: int                               # tracks (or channels, for type 0) that had notes
    off_grid: float                           # share of note onsets not on the 16th grid (rounded)
    flags: list[str] = field(default_factory=list)   # accepted oddities (hanging notes, folded pitches)


def find_midi(folder: Path) -> list[Path]:
    """MIDI files under `folder` by suffix, sorted; hidden entries skipped, directory links not followed. A folder
    without any is a FileNotFoundError that says so."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, f) for f in files if not f.startswith(".") and Path(f).suffix.lower() in MIDI_SUFFIXES]
    if not found:
        raise FileNotFoundError(f"{folder}: no MIDI files (*.mid, *.midi) under it")
    return sorted(found)


def read_midi(path: Path) -> mido.MidiFile:
    """Parse one MIDI file under the size, message, division, tempo and duration caps, or raise BadMidi."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise BadMidi(path, f"cannot stat ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):                          # a FIFO would block forever
        raise BadMidi(path, "not a regular file")
    if st.st_size == 0:
        raise BadMidi(path, "empty file")
    if st.st_size > MAX_BYTES:
        raise BadMidi(path, f"{st.st_size:,} bytes is over the {MAX_BYTES:,}-byte cap for a MIDI clip")
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"MThd":                                   # text, a RIFF RMID wrapper, an image renamed .mid
        raise BadMidi(path, f"not a MIDI file (starts with {data[:4]!r}, not b'MThd')")
    if problem := _chunk_problem(data):
        raise BadMidi(path, problem)
    try:
        mid = mido.MidiFile(file=io.BytesIO(data), clip=False)
    except EOFError:                                          # chunk lengths are checked: an event overruns its track
        raise BadMidi(path, "truncated (an event runs past the end of the file)") from None
    except Exception as e:   # OSError, KeyError, IndexError, ValueError, KeySignatureError ... (mido raises them all)
        raise BadMidi(path, f"not a valid MIDI file ({type(e).__name__}: {e})") from None
    if mid.type not in (0, 1):
        raise BadMidi(path, f"MIDI format {mid.type} is not supported (0 or 1)")
    if mid.ticks_per_beat <= 0:
        raise BadMidi(path, f"division {mid.ticks_per_beat}: zero or SMPTE time code, not ticks per beat")
    if not mid.tracks:
        raise BadMidi(path, "no tracks")
    if sum(map(len, mid.tracks)) > MAX_MESSAGES:
        raise BadMidi(path, f"more than {MAX_MESSAGES:,} messages")
    tempo_map = _tempo_map(mid)          # our own duration: mid.length is slow and divides by the tempo
    if any(t == 0 for _, t in tempo_map):
        raise BadMidi(path, "tempo 0 (every event at time 0)")
    total = max((sum(m.time for m in t) for t in mid.tracks), default=0)
    seconds = _ticks_to_seconds(total, tempo_map, mid.ticks_per_beat)
    if not seconds <= MAX_SECONDS:
        raise BadMidi(path, f"absurd duration {seconds:.3g} s (delta times too large; cap {MAX_SECONDS:g} s)")
    return mid


def _chunk_problem(data: bytes) -> str | None:
    """Why the chunks of an SMF cannot hold the tracks its header declares, or None. Checked before mido, whose
    errors mislead here: a track length past the end of the file reads on into the next chunk's header as events
    ("running status without last_status"), and a missing track is an EOFError like any truncation."""
    size = len(data)
    if size < 14:
        return f"truncated ({size} bytes; a MIDI header chunk alone is 14)"
    if (head_len := int.from_bytes(data[4:8], "big")) < 6:
        return f"header chunk length {head_len}, not 6"
    declared = int.from_bytes(data[10:12], "big", signed=True)   # signed, as mido reads it; <= 0: no tracks
    pos = 0
    for i in range(1 + max(declared, 0)):                        # the header chunk, then each track chunk
        if pos + 8 > size:
            return (f"no tracks (the header declares {declared}, found 0)" if i == 1 else
                    f"truncated (the header declares {declared} tracks, found {i - 1})")
        n = int.from_bytes(data[pos + 4:pos + 8], "big")
        if pos + 8 + n > size:
            what = "header chunk" if i == 0 else f"track {i} chunk"
            return (f"{what} at byte {pos:,} declares {n:,} bytes but the file is {size:,} bytes "
                    "(truncated, or a corrupt chunk length)")
        pos += 8 + n
    return None


def _merged(mid: mido.MidiFile):
    """(absolute tick, track index, message) for every message, sorted by tick (stable within a track)."""
    out = []
    for i, track in enumerate(mid.tracks):
        now = 0
        for msg in track:
            now += msg.time
            out.append((now, i, msg))
    out.sort(key=lambda e: e[0])
    return out


def _tempo_map(mid: mido.MidiFile) -> list[tuple[int, int]]:
    """[(tick, µs per beat)] from set_tempo events, starting with the default 500000 (120 bpm)."""
    changes = [(t, m.tempo) for t, _, m in _merged(mid) if m.type == "set_tempo"]
    return [(0, 500_000)] + changes


def _ticks_to_seconds(tick: int, tempo_map: list[tuple[int, int]], tpb: int) -> float:
    seconds, last_tick, last_tempo = 0.0, 0, tempo_map[0][1]
    for t, tempo in tempo_map[1:]:
        if t >= tick:
            break
        seconds += (t - last_tick) * last_tempo / 1e6 / tpb
        last_tick, last_tempo = t, tempo
    return seconds + (tick - last_tick) * last_tempo / 1e6 / tpb


def midi_to_roll(path: Path, enc: Encoding) -> MidiClip:
    """Read a MIDI file into a roll on the 16th grid. Voices: each track (or channel, in a type-0 file) with notes
    is a voice, in file order; a melody takes the highest line sounding at each step (skyline). Drums (channel 10) are
    ignored; velocity-0 note_on is a note_off; notes still on at the end are closed there (flagged)."""
    mid = read_midi(path)
    tpb = mid.ticks_per_beat
    flags: list[str] = []
    open_notes: dict[tuple, int] = {}                        # (part, channel, pitch) -> onset tick
    raw: list[tuple[int, int, int, int]] = []                 # (part, onset tick, end tick, pitch)
    parts: dict[tuple, int] = {}
    programs: dict[int, int] = {}
    tempo, ts = None, None
    end = 0
    for now, ti, msg in _merged(mid):
        end = max(end, now)
        if msg.type == "set_tempo" and tempo is None:
            tempo = mido.tempo2bpm(msg.tempo)
        elif msg.type == "time_signature" and ts is None:
            ts = (msg.numerator, msg.denominator)
        if not hasattr(msg, "channel") or msg.channel == 9:
            continue
        part_key = (ti, msg.channel) if mid.type == 0 else (ti,)
        if msg.type == "program_change":
            programs.setdefault(parts.setdefault(part_key, len(parts)), msg.program)
        elif msg.type in ("note_on", "note_off"):
            part = parts.setdefault(part_key, len(parts))
            key = (part, msg.channel, msg.note)
            if key in open_notes:                              # any event on a sounding pitch ends it
                on = open_notes.pop(key)
                raw.append((part, on, now, msg.note))
            if msg.type == "note_on" and msg.velocity > 0:
                open_notes[key] = now
    if open_notes:
        flags.append(f"{len(open_notes)} note(s) never switched off (closed at the end)")
        raw += [(k[0], on, end, k[2]) for k, on in open_notes.items()]
    used = sorted({r[0] for r in raw})
    if not raw:
        raise BadMidi(path, "no notes")
    voice_of = {p: i for i, p in enumerate(used)}
    if enc.voices > 1 and len(used) != enc.voices:
        flags.append(f"{len(used)} parts with notes; the first {enc.voices} kept" if len(used) > enc.voices else
                     f"{len(used)} part(s) with notes: voices {len(used) + 1}-{enc.voices} are empty")
    step = tpb / STEPS_PER_BEAT
    arr = np.array([(voice_of[p], round(on / step), max(1, round(e / step) - round(on / step)), pitch)
                    for p, on, e, pitch in raw if enc.voices == 1 or voice_of[p] < enc.voices],
                   dtype=np.int64).reshape(-1, 4)
    if enc.voices == 1:
        arr = skyline(arr)
    off_grid = float(np.mean([on % step != 0 for _, on, _, _ in raw]))
    out_of_range = int(((arr[:, 3] < enc.lo) | (arr[:, 3] > enc.hi)).sum())
    if out_of_range:
        flags.append(f"{out_of_range} note(s) outside MIDI {enc.lo}-{enc.hi} moved by octaves")
    steps = max(int((arr[:, 1] + arr[:, 2]).max()), round(end / step))   # trailing rests up to end_of_track
    roll = notes_to_roll(arr, steps, enc)
    progs = tuple(programs.get(p, 0) for p in used[:enc.voices])
    return MidiClip(roll, round(tempo, 3) if tempo else 120.0, ts or (4, 4), progs, len(used), off_grid, flags)


# ---------------------------------------------------------------- piano-roll PNG

VOICE_COLOURS = ((200, 40, 40), (40, 120, 200), (40, 160, 70), (150, 80, 190))
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Pillow's built-in bitmap font: 6 px a character, an 11 px cell with capitals on rows 2-8, crisp at any px and
# the same on every machine (load_default() is a FreeType font where FreeType is built in)
LABEL_W = 28                          # pitch-label margin: "C#-1" is 24 px
BAR_H = 12                            # bar-number strip above the roll


def note_name(pitch: int) -> str:
    """MIDI pitch -> scientific pitch name, 60 -> "C4", 61 -> "C#4"."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def roll_to_png(roll: np.ndarray, enc: Encoding, steps_per_bar: int = 16, px: int = 4) -> bytes:
    """A piano-roll picture: time to the right (`px` pixels per 16th), pitch up (pitch range of the clip
    +- 2), bar lines, one colour per voice, each note's first step darker so repeated notes are visible; every C
    labelled in a left margin (the lowest note where the range holds no C) and bars numbered along the top."""
    roll = np.asarray(roll)
    notes = roll_to_notes(roll, enc.lo)
    lo, hi = (int(notes[:, 3].min()) - 2, int(notes[:, 3].max()) + 2) if len(notes) else (enc.lo, enc.lo + 24)
    h, w = (hi - lo + 1) * px, roll.shape[1] * px
    x0, y0 = LABEL_W, BAR_H                                    # top-left corner of the roll
    # palette mode (ImageDraw adds each RGB colour to the palette): one byte a pixel encodes ~4x faster than RGB
    img = Image.new("P", (x0 + w + 1, y0 + h), (255, 255, 255))
    draw, font = ImageDraw.Draw(img), ImageFont.load_default_imagefont()
    for p in range(lo, hi + 1):                                # black-key rows shaded, like a piano roll
        if p % 12 in (1, 3, 6, 8, 10):
            y = y0 + (hi - p) * px
            draw.rectangle([x0, y, x0 + w, y + px - 1], fill=(243, 243, 243))
    for s in range(0, roll.shape[1] + 1, STEPS_PER_BEAT):     # beat lines; bar lines darker and up into the strip
        bar = s % steps_per_bar == 0
        draw.line([(x0 + s * px, 0 if bar else y0), (x0 + s * px, y0 + h)], fill=(150,) * 3 if bar else (225,) * 3)
    for v, on, dur, p in notes:
        colour = VOICE_COLOURS[v % len(VOICE_COLOURS)]
        x, y = x0 + on * px, y0 + (hi - p) * px
        draw.rectangle([x, y, x + dur * px - 1, y + px - 1], fill=colour)
        draw.rectangle([x, y, x + max(0, px // 2 - 1), y + px - 1], fill=tuple(c // 2 for c in colour))
    for s in range(0, roll.shape[1], steps_per_bar):           # bar numbers just right of each bar line
        draw.text((x0 + s * px + 2, 0), str(s // steps_per_bar + 1), font=font, fill=(60, 60, 60))
    labelled = [p for p in range(lo, hi + 1) if p % 12 == 0] or [lo + 2 if len(notes) else lo]
    for p in labelled:                                         # octave rows only: 12 * px apart, never overlapping
        name = note_name(p)
        y = y0 + (hi - p) * px + px // 2 - 5                   # capitals (rows 2-8 of the cell) centred on the row
        draw.text((x0 - 2 - font.getlength(name), min(max(y, y0 - 2), img.height - 9)), name, font=font,
                  fill=(60, 60, 60))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
