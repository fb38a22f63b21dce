"""Music: token rolls <-> MIDI files read back by mido, bad MIDI reported, metrics with known answers, and a tiny
end-to-end flow (ingest a few corpus pieces, train two steps, sample, read the MIDI back)."""

import json
import os
import shutil
import sys
import wave
from pathlib import Path

import mido
import numpy as np
import pytest

from flows.stages import open_stage
from formats import music_metrics as mm
from formats.music import (BAR_H, CHORALE, HOLD, LABEL_W, MELODY, OFFSET, REST, BadMidi, canonical, cut, midi_to_roll,
                           notes_to_roll, roll_to_midi, roll_to_notes, roll_to_png, transpose)
from models.checkpoints import read_config


def tok(pitch: int, enc=MELODY) -> int:
    return OFFSET + pitch - enc.lo


def melody() -> np.ndarray:
    """Two bars: C4 quarter, C4 8th (a repeat, not a hold), 8th rest, E4 G4 16ths, C5 quarter; a bar of 8ths."""
    C, E, G, C5 = (tok(p) for p in (60, 64, 67, 72))
    bar1 = [C, HOLD, HOLD, HOLD, C, HOLD, REST, REST, E, G, REST, REST, C5, HOLD, HOLD, HOLD]
    bar2 = [t for p in (60, 62, 64, 65, 67, 65, 64, 62) for t in (tok(p), HOLD)]
    return np.array([bar1 + bar2])


def test_melody_round_trip_through_a_real_file(tmp_path):
    roll = melody()
    path = tmp_path / "m.mid"
    path.write_bytes(roll_to_midi(roll, MELODY, tempo=100, programs=(73,), time_signature=(4, 4)))
    mid = mido.MidiFile(path)                                  # mido itself reads what we wrote
    assert mid.type == 1 and len(mid.tracks) == 2 and mid.ticks_per_beat == 480
    meta = {m.type: m for m in mid.tracks[0]}
    ts = meta["time_signature"]
    assert meta["set_tempo"].tempo == 600_000 and (ts.numerator, ts.denominator) == (4, 4)
    msgs = [m for m in mid.tracks[1] if not m.is_meta]
    assert msgs[0].type == "program_change" and msgs[0].program == 73
    ons = [m for m in msgs if m.type == "note_on"]
    assert len(ons) == 13 and all(60 <= m.velocity <= 100 for m in ons) and ons[0].velocity > ons[1].velocity
    # the repeated C4 at step 4: its note_off comes before the new note_on, at the same tick
    t, seq = 0, []
    for m in mid.tracks[1]:
        t += m.time
        if m.type in ("note_on", "note_off"):
            seq.append((t, m.type, m.note))
    assert seq[1:3] == [(480, "note_off", 60), (480, "note_on", 60)]
    assert mid.length == pytest.approx(32 * 0.15)              # 32 16ths at 100 bpm
    clip = midi_to_roll(path, MELODY)
    assert np.array_equal(clip.roll, roll) and clip.tempo == 100 and clip.programs == (73,) and not clip.flags


def test_chorale_round_trip_one_track_per_voice(tmp_path):
    rng = np.random.default_rng(0)
    notes = [(v, s, 2 * (1 + rng.integers(0, 3)), base + rng.integers(-3, 4))
             for v, base in enumerate((72, 65, 57, 45)) for s in range(0, 64, 6)]
    roll = notes_to_roll(np.array(notes), 64, CHORALE)
    path = tmp_path / "c.mid"
    path.write_bytes(roll_to_midi(roll, CHORALE, tempo=72, programs=(52, 52, 52, 32)))
    mid = mido.MidiFile(path)
    assert len(mid.tracks) == 5
    channels = [{m.channel for m in t if not m.is_meta} for t in mid.tracks[1:]]
    assert channels == [{0}, {1}, {2}, {3}]
    clip = midi_to_roll(path, CHORALE)
    assert np.array_equal(clip.roll, roll) and clip.programs == (52, 52, 52, 32)
    assert clip.tempo == pytest.approx(72, abs=1e-3)
    assert np.array_equal(roll_to_notes(roll, CHORALE.lo)[:, 3].min(), min(n[3] for n in notes))
    png = roll_to_png(roll, CHORALE)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = png_pixels(png)
    assert rgb.shape[1] == LABEL_W + 64 * 4 + 1
    drawn = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert {(200, 40, 40), (40, 120, 200), (40, 160, 70), (150, 80, 190)} <= drawn          # one colour per voice


def png_pixels(png: bytes) -> np.ndarray:
    from PIL import Image
    import io
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))                          # (H, W, 3)


def has_text(rgb: np.ndarray, rows: slice, cols: slice) -> bool:
    return bool((rgb[rows, cols].max(axis=-1) < 120).any())                 # labels are dark grey; lines are not


def test_piano_roll_png_labels_octaves_and_numbers_bars():
    roll, px = melody(), 4                                         # MIDI 60-72: rows 58-74 drawn, C4 and C5 in range
    rgb = png_pixels(roll_to_png(roll, MELODY, px=px))
    assert rgb.shape == (BAR_H + (74 - 58 + 1) * px, LABEL_W + 32 * px + 1, 3)
    near = {p: slice(BAR_H + (74 - p) * px - 2, BAR_H + (75 - p) * px + 2) for p in (60, 66, 72)}   # row +- 2 px
    margin = slice(0, LABEL_W)
    assert has_text(rgb, near[60], margin) and has_text(rgb, near[72], margin)     # C4, C5
    assert not has_text(rgb, near[66], margin)                                     # F#4: no label between the Cs
    strip = slice(0, BAR_H)
    for bar in range(2):                                           # "1" and "2" just right of each bar line
        assert has_text(rgb, strip, slice(LABEL_W + bar * 16 * px + 1, LABEL_W + bar * 16 * px + 10)), bar
    assert not has_text(rgb, strip, slice(LABEL_W + 12, LABEL_W + 16 * px - 1))
    # no C among rows 61-70: the lowest note (D#4) is labelled instead
    rgb = png_pixels(roll_to_png(notes_to_roll(np.array([(0, 0, 4, 63), (0, 4, 4, 68)]), 16, MELODY), MELODY))
    assert has_text(rgb, slice(BAR_H + (70 - 63) * px - 2, BAR_H + (71 - 63) * px + 2), margin)


def test_other_writers_velocity_zero_and_type_0(tmp_path):
    """A type-0 file from another tool: 960 ticks per beat, note_on velocity 0 as note-off, two channels,
    a hanging note and a drum hit (ignored)."""
    mid = mido.MidiFile(type=0, ticks_per_beat=960)
    mid.tracks.append(mido.MidiTrack([
        mido.Message("note_on", channel=0, note=67, velocity=90, time=0),
        mido.Message("note_on", channel=1, note=48, velocity=90, time=0),
        mido.Message("note_on", channel=9, note=36, velocity=90, time=0),
        mido.Message("note_on", channel=0, note=67, velocity=0, time=960),
        mido.Message("note_on", channel=0, note=69, velocity=90, time=0),
        mido.Message("note_on", channel=0, note=69, velocity=0, time=480)]))   # channel 1 never switched off
    path = tmp_path / "other.mid"
    mid.save(path)
    mel = midi_to_roll(path, MELODY)                   # skyline: the top line, 67 then 69
    assert mel.roll[0, :6].tolist() == [tok(67), HOLD, HOLD, HOLD, tok(69), HOLD]
    assert mel.tempo == 120.0 and any("never switched off" in f for f in mel.flags)
    ch = midi_to_roll(path, CHORALE)
    assert ch.tracks == 2 and ch.roll[1, 0] == tok(48, CHORALE) and (ch.roll[2:] == REST).all()


def test_melody_of_several_parts_is_the_top_line_and_lower_onsets_never_cut_it(tmp_path):
    """Two tracks: a soprano holding half notes over a bass moving in quarters (and below the melody range), then
    the bass alone. The melody is the soprano held whole, then the bass where it is the only line sounding; only
    the bass note the melody takes counts as moved into the range."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    soprano = [mido.Message("note_on", note=72, velocity=80, time=0), mido.Message("note_off", note=72, time=960),
               mido.Message("note_on", note=74, velocity=80, time=0), mido.Message("note_off", note=74, time=960)]
    bass = []
    for i, pitch in enumerate((36, 38, 40, 41, 43)):                    # quarters; the last sounds alone
        bass += [mido.Message("note_on", channel=1, note=pitch, velocity=80, time=0),
                 mido.Message("note_off", channel=1, note=pitch, time=480)]
    mid.tracks += [mido.MidiTrack(soprano), mido.MidiTrack(bass)]
    mid.save(tmp_path / "two.mid")
    clip = midi_to_roll(tmp_path / "two.mid", MELODY)
    assert clip.roll[0, :20].tolist() == [tok(72)] + [HOLD] * 7 + [tok(74)] + [HOLD] * 7 + [tok(55)] + [HOLD] * 3
    assert clip.flags == ["1 note(s) outside MIDI 48-83 moved by octaves"], clip.flags
    chorale = midi_to_roll(tmp_path / "two.mid", CHORALE)
    assert chorale.roll[1, :20].tolist().count(HOLD) == 15                # the bass keeps its own five notes


def valid_bytes() -> bytes:
    return roll_to_midi(melody(), MELODY)


def bad_files(folder: Path) -> dict[str, str]:
    """name -> a word the reason must contain."""
    good = valid_bytes()
    cases = {"empty.mid": (b"", "empty"), "text.mid": (b"hello, not midi\n" * 4, "not a MIDI file"),
             "truncated.mid": (good[:-20], "truncated"), "head.mid": (good[:10], "truncated"),
             "format3.mid": (good[:8] + b"\x00\x03" + good[10:], "format 3"),
             "division0.mid": (good[:12] + b"\x00\x00" + good[14:], "division 0"),
             "smpte.mid": (good[:12] + b"\xe7\x28" + good[14:], "SMPTE")}
    i = good.index(b"\x00\xc0\x49") + 1                        # program change status -> undefined 0xF4
    cases["status.mid"] = (good[:i] + b"\xf4" + good[i + 1:], "not a valid MIDI")
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    t0 = mido.MidiFile()
    t0.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=0), mido.Message("note_on", note=60, time=10),
                                     mido.Message("note_off", note=60, time=10)]))
    t0.save(folder / "tempo0.mid")
    far = mido.MidiFile()
    far.tracks.append(mido.MidiTrack([m for _ in range(50) for m in (mido.Message("note_on", note=60, time=0x0FFFFFFF),
                                                                     mido.Message("note_off", note=60, time=1))]))
    far.save(folder / "far.mid")
    silent = mido.MidiFile()
    silent.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000)]))
    silent.save(folder / "silent.mid")
    (folder / "huge.mid").write_bytes(good + b"\0" * (1 << 20))
    return {**{k: v[1] for k, v in cases.items()}, "tempo0.mid": "tempo 0", "far.mid": "absurd duration",
            "silent.mid": "no notes", "huge.mid": "cap"}


def test_bad_chunk_lengths_and_missing_tracks_say_so(tmp_path):
    good = valid_bytes()                                           # header declares 2 tracks
    i = good.index(b"MTrk")
    cases = {"long.mid": (good[:i + 4] + (2 ** 31).to_bytes(4, "big") + good[i + 8:],   # mido: "running status ..."
                          ["track 1 chunk", "declares 2,147,483,648 bytes", f"the file is {len(good):,} bytes"]),
             "header.mid": (good[:14], ["no tracks", "declares 2, found 0"]),          # mido: EOFError
             "fifty.mid": (good[:10] + b"\x00\x32" + good[12:], ["truncated", "declares 50 tracks, found 2"])}
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadMidi) as err:
            midi_to_roll(tmp_path / name, MELODY)
        msg = str(err.value)
        assert all(w in msg for w in words) and "running status" not in msg and "\n" not in msg, (name, msg)


def test_bad_midi_files_give_one_line_reasons(tmp_path):
    expected = bad_files(tmp_path)
    for name, word in expected.items():
        with pytest.raises(BadMidi) as err:
            midi_to_roll(tmp_path / name, MELODY)
        msg = str(err.value)
        assert msg.startswith(str(tmp_path / name) + ": ") and word in msg and "\n" not in msg, (name, msg)


# ---------------------------------------------------------------- metrics with known answers

def test_metrics_on_hand_made_rolls():
    roll = melody()
    assert mm.pitch_class_histogram(roll, MELODY.lo)[0] == pytest.approx(4 / 13)          # C: 3 C4 + 1 C5 of 13 notes
    lengths = mm.note_length_histogram(roll, MELODY.lo)
    # quarter x 2 (C4, C5), 8th x 9 (C4 + 8 eighths), 16th x 2 (E, G), no half ... of 13 notes
    assert lengths[[2, 3, 4, 1]].tolist() == pytest.approx([2 / 13, 9 / 13, 2 / 13, 0])
    assert mm.pitch_range(roll, MELODY.lo) == 12
    assert mm.qualified_note_rate(roll, MELODY.lo) == pytest.approx(11 / 13)
    assert mm.in_scale_rate(roll, MELODY.lo) == 1.0 and mm.best_major_scale(roll, MELODY.lo) in (0, 7, 5)
    assert mm.estimate_key(roll, MELODY.lo) == (0, 0)                                     # C major
    # intervals: 0, 4, 3, 5, -12, 2, 2, 1, 2, -2, -1, -2 -> mean |.| = 36 / 12
    assert mm.mean_interval(roll, MELODY.lo) == pytest.approx(36 / 12)
    two = np.concatenate([roll, np.full((1, 16), REST)], 1)                               # a silent 3rd bar
    assert mm.empty_bar_rate(two) == pytest.approx(1 / 3)
    assert mm.used_pitch_classes(two, MELODY.lo) == pytest.approx((3 + 5) / 2)           # {C,E,G}, {C,D,E,F,G}
    # chorale: C major triad + octave in all four beats -> 4 pitches sounding, TD(C, C) = 0, TD(C, F#) > TD(C, G)
    def chord(pitches):
        return notes_to_roll(np.array([(v, 0, 16, p) for v, p in enumerate(pitches)]), 16, CHORALE)
    c = chord((72, 67, 64, 48))
    assert mm.polyphonicity(c, CHORALE.lo) == 1.0 and mm.used_pitch_classes(c, CHORALE.lo) == 3
    assert mm.tonal_distance(c[:1], c[3:], CHORALE.lo) == pytest.approx(0)
    g, fs = chord((79, 0, 0, 0))[:1], chord((78, 0, 0, 0))[:1]
    assert mm.tonal_distance(c[:1], fs, CHORALE.lo) > mm.tonal_distance(c[:1], g, CHORALE.lo) > 0
    assert mm.reconstruction_accuracy(roll, np.where(np.arange(32) < 8, roll, REST)) == pytest.approx(
        (8 + (roll[0, 8:] == REST).sum()) / 32)
    assert mm.copy_rate(np.stack([roll, two[:, 16:48]]), np.stack([roll])) == 0.5


def test_overlap_same_set_high_and_different_set_low():
    rng = np.random.default_rng(0)
    scale = [60, 62, 64, 65, 67, 69, 71, 72]

    def tune(pitches, long: bool):
        d = 4 if long else 1
        notes = [(0, s, d, pitches[rng.integers(len(pitches))]) for s in range(0, 32, d)]
        return notes_to_roll(np.array(notes), 32, MELODY)

    real = [tune(scale, True) for _ in range(60)]
    same = [tune(scale, True) for _ in range(60)]
    other = [tune(list(range(48, 84)), False) for _ in range(60)]
    a, b = mm.overlap(real, same, MELODY.lo), mm.overlap(real, other, MELODY.lo)
    for name in mm.FEATURES:
        assert a[name]["oa"] > 0.8 and a[name]["oa"] > b[name]["oa"], name
    assert b["note_lengths"]["oa"] < 0.2 and b["note_lengths"]["kld"] > a["note_lengths"]["kld"]


def test_windows_cut_and_transpose():
    roll = melody()
    w = cut(roll, 1, 17, MELODY.lo)                            # starts inside the held C4
    assert w[0, 0] == tok(60) and np.array_equal(w[0, 1:], roll[0, 2:17])
    assert transpose(roll, 5, MELODY)[0, 0] == tok(65)
    assert transpose(roll, 12, MELODY) is None                 # C5 + 12 = C6 leaves MIDI 48-83
    orphan = np.array([[HOLD, tok(60), HOLD, REST, HOLD]])
    assert canonical(orphan).tolist() == [[REST, tok(60), HOLD, REST, REST]]


# ---------------------------------------------------------------- stages, flows, CLI

TINY = {"widths": [8, 16], "latent": 4}
TINY_TRAINING = {"steps": 2, "epoch_steps": 1, "batch_size": 4}


def melody_folder(folder: Path, n: int = 4) -> Path:
    """n 4-bar melodies written as MIDI files, plus broken files that the ingest must report and skip."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        notes = [(0, s, 2 * rng.integers(1, 3), 60 + rng.choice([0, 2, 4, 5, 7, 9])) for s in range(0, 64, 4)]
        (folder / f"tune{i}.mid").write_bytes(roll_to_midi(notes_to_roll(np.array(notes), 64, MELODY), MELODY))
    good = (folder / "tune0.mid").read_bytes()
    (folder / "broken.mid").write_bytes(good[:-20])
    (folder / "notes.mid").write_text("not midi")
    os.mkfifo(folder / "pipe.mid")                            # would block a naive open()
    return folder


def read_back(path: Path, enc) -> np.ndarray:
    mid = mido.MidiFile(path)
    assert len(mid.tracks) == enc.voices + 1 and any(m.type == "set_tempo" for m in mid.tracks[0])
    return midi_to_roll(path, enc).roll


def test_midi_folder_ingest_train_sample_interpolate_stats(tmp_path, monkeypatch):
    from flows.music import (SOUNDFONTS, interpolate_music, ingest_music, music_stats, sample_music, train_music,
                             window_split)

    src = melody_folder(tmp_path / "midi")
    ingested = ingest_music(str(src), "melody")
    ingest, manifest = ingested.folder, ingested.manifest
    assert manifest["counts"] == {"units": 7, "pieces": 4, "failed": 3, "steps": 256}
    reasons = {Path(f["file"]).name: f["reason"] for f in manifest["failed"]}
    assert "truncated" in reasons["broken.mid"] and "not a MIDI file" in reasons["notes.mid"]
    assert reasons["pipe.mid"] == "not a regular file"
    again = ingest_music(str(src), "melody")
    assert again.cached and again.folder == ingest and not ingested.cached   # cached by content
    (xt, lt), (xv, lv), enc, info = window_split(str(ingest), 2)
    assert info["windows"] == 4 * 3 and xt.shape[1:] == (1, 32) and len(xt) > 3 * len(xv)   # transposed copies
    assert lt[:, 1].max() < 12 and set(lt[:, 2]) <= {0, 1} and (lt[:, 0] == 0).all()   # key, mode, meter 4/4

    model = train_music(str(ingest), 2, TINY, TINY_TRAINING, progress=False).folder
    cfg = read_config(model)
    assert cfg["steps"] == 2 and cfg["model"]["vocab"] == MELODY.vocab and cfg["model"]["shape"] == [1, 32]
    assert "val_acc" in cfg["metrics"] and cfg["data"]["mode"] == "melody" and cfg["data"]["job"] == "music"
    assert sum(map(sum, cfg["data"]["key_counts"])) == info["windows"] - len(xv)   # the corpus's keys, untransposed

    report = sample_music(str(tmp_path / "clips"), str(model), n=2, bars=5, tempo=90, program=0, key="D", seed=3)
    for clip in report["clips"]:
        roll = read_back(tmp_path / "clips" / clip["midi"], MELODY)
        assert roll.shape == (1, 80) and (tmp_path / "clips" / clip["png"]).stat().st_size > 100
        assert mido.MidiFile(tmp_path / "clips" / clip["midi"]).length == pytest.approx(80 * 60 / 90 / 4)
    again = sample_music(str(tmp_path / "again"), str(model), n=2, bars=5, tempo=90, program=0, key="D", seed=3)
    assert [(tmp_path / "again" / c["midi"]).read_bytes() for c in again["clips"]] == \
        [(tmp_path / "clips" / c["midi"]).read_bytes() for c in report["clips"]]        # seeded
    (tmp_path / "again" / "notes.txt").write_text("mine")
    fewer = sample_music(str(tmp_path / "again"), str(model), n=1, bars=5, seed=4)      # the same folder, fewer clips
    left = sorted(p.name for p in (tmp_path / "again").iterdir())
    assert left == ["clip-000.mid", "clip-000.png", "notes.txt", "report.json"], left  # the earlier clip-001 is gone
    assert fewer["removed_earlier"] == ["clip-001.mid", "clip-001.png"] and fewer["outputs"] == left[:2]

    morph = interpolate_music(str(src / "tune0.mid"), str(src / "tune1.mid"), str(tmp_path / "morph"), str(model), steps=3)
    assert morph["windows"] == 2 and morph["bars"] == 4                     # every whole window of the shorter tune
    assert read_back(tmp_path / "morph" / "morph.mid", MELODY).shape == (1, 3 * 4 * 16)
    assert "read_notes" not in morph
    wild = mido.MidiFile(ticks_per_beat=480)                      # notes below and above the melody range
    wild.tracks.append(mido.MidiTrack([mido.Message("note_on", note=p, velocity=80, time=0 if i == 0 else 480)
                                       for i, p in enumerate((20, 120))] + [mido.Message("note_off", note=120, time=480)]))
    wild.save(tmp_path / "wild.mid")
    odd = interpolate_music(str(tmp_path / "wild.mid"), str(src / "tune1.mid"), str(tmp_path / "odd"), str(model), steps=2)
    assert list(odd["read_notes"]) == ["a"] and any("outside MIDI 48-83" in f for f in odd["read_notes"]["a"])
    stats = music_stats(str(src))
    assert stats["counts"] == {"files": 7, "read": 4, "failed": 3} and stats["mean"]["in_scale"] == 1.0
    if not shutil.which("fluidsynth"):                      # without it, --wav says what to install
        with pytest.raises(RuntimeError, match="fluid-soundfont-gm"):
            sample_music(str(tmp_path / "wav"), str(model), n=1, wav=True)
        # fluidsynth is not installed here: a stand-in with its command line (`fluidsynth -ni [options]
        # SOUNDFONT MIDI`, -F renders to a file) checks what we pass and writes a real WAV from the MIDI's length
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "fluidsynth").write_text(FLUIDSYNTH_STAND_IN.replace("PYTHON", sys.executable))
        (bin_dir / "fluidsynth").chmod(0o755)
        (tmp_path / "gm.sf2").write_bytes(b"RIFF\0\0\0\0sfbk")
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("AEFLOW_SOUNDFONT", str(tmp_path / "gm.sf2"))
    if shutil.which("fluidsynth") and (os.environ.get("AEFLOW_SOUNDFONT") or any(map(os.path.isfile, SOUNDFONTS))):
        wav = sample_music(str(tmp_path / "wav"), str(model), n=2, bars=4, tempo=120, wav=True)
        for clip in wav["clips"]:
            with wave.open(str(tmp_path / "wav" / clip["wav"])) as w:     # as long as its MIDI file
                assert w.getnframes() / w.getframerate() >= mido.MidiFile(tmp_path / "wav" / clip["midi"]).length
        assert not list((tmp_path / "wav").glob(".*.tmp*"))                # renamed into place, nothing left over


FLUIDSYNTH_STAND_IN = """#!PYTHON
import sys, wave
import mido
args = sys.argv[1:]
assert args[0] == "-ni", args
out, rate = args[args.index("-F") + 1], int(args[args.index("-r") + 1])
font, midi = args[-2:]
assert open(font, "rb").read(4) == b"RIFF", font
frames = int((mido.MidiFile(midi).length + 1) * rate)       # the MIDI must parse; 1 s of release tail
with wave.open(out, "wb") as w:
    w.setnchannels(2); w.setsampwidth(2); w.setframerate(rate); w.writeframes(bytes(4 * frames))
"""


@pytest.mark.prefect
def test_chorale_flows_and_cli_end_to_end(tmp_path):
    """Three music21 chorales ingested, a tiny key-conditioned cvae with an autoregressive head, clips (a latent
    walk of two windows) and stats through the Prefect flows and the CLI."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows import pipelines
    model = pipelines.music_train_flow(source="bach", mode="chorale", bars=2, limit=3, model={**TINY, "ar": 3},
                                       training=TINY_TRAINING, condition="key", progress=False).folder   # 3 pieces parse in-process (4+: worker processes)
    cfg = read_config(model)
    assert cfg["model"]["kind"] == "cvae" and cfg["model"]["cond"] == [12, 2] and cfg["model"]["shape"] == [4, 32]
    assert cfg["model"]["ar"] == 3
    ingest = open_stage(model.parents[1] / "ingest-music" / cfg["data"]["ingest"]).manifest
    assert ingest["counts"]["pieces"] == 3 and ingest["counts"]["failed"] == 0 and ingest["off_grid_notes"] < 0.01
    report = pipelines.music_sample_flow(out_dir=str(tmp_path / "ch"), model=str(model), n=2, bars=4, key="Bb")
    for clip in report["clips"]:
        assert read_back(tmp_path / "ch" / clip["midi"], CHORALE).shape == (4, 64)
    result = CliRunner().invoke(app, ["music", "stats", "--mode", "chorale", str(tmp_path / "ch")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "2 read, 0 failed of 2 files" in result.output and "mean" in result.output


def test_shipped_model_demo_writes_clips_that_read_back(tmp_path):
    from flows.catalog import PRETRAINED
    from flows.music import PRETRAINED_CHORALE, PRETRAINED_MELODY, demo_music

    for folder in (PRETRAINED / PRETRAINED_MELODY, PRETRAINED / PRETRAINED_CHORALE):
        assert all(f.stat().st_size < 2 << 20 for f in folder.iterdir()) and (folder / "MODEL_CARD.md").is_file()
    both = demo_music(str(tmp_path))
    report = both["melodies"]
    assert len(report["clips"]) == 4 and report["bars"] == 8 and report["window_bars"] == 2
    for clip in report["clips"]:
        roll = read_back(tmp_path / clip["midi"], MELODY)
        assert roll.shape == (1, 128) and clip["notes"] >= 8 and clip["empty_bars"] <= 0.25
        assert (tmp_path / clip["png"]).read_bytes()[:4] == b"\x89PNG"
    assert report["summary"]["in_scale"] > 0.8           # a trained model, not noise (random tokens: ~0.6)
    chorales = both["chorales"]
    assert len(chorales["clips"]) == 2 and chorales["window_bars"] == 4 and chorales["instruments"] == ["Choir Aahs"]
    for clip in chorales["clips"]:
        assert read_back(tmp_path / "chorales" / clip["midi"], CHORALE).shape == (4, 128)


def test_shipped_chorale_model_sings_four_ordered_voices_in_the_asked_key(tmp_path):
    """models/pretrained/music-chorale-4bar-key (float16 on disk; a unique prefix names it): 8-bar four-part
    phrases (a latent walk over two 4-bar windows), one track per voice read back by mido, every voice singing,
    soprano above alto above tenor above bass on average, and in the key asked for (a clip that comes out in
    another key is drawn again)."""
    from flows.music import sample_music

    report = sample_music(str(tmp_path), "music-chorale", n=6, bars=8, key="Eb", seed=0)
    assert Path(report["model"]).name == "music-chorale-4bar-key" and report["mode"] == "chorale"
    rolls = np.stack([read_back(tmp_path / c["midi"], CHORALE) for c in report["clips"]])      # (6, 4, 128)
    pitch = mm.sounding(rolls.transpose(1, 0, 2).reshape(4, -1), CHORALE.lo)                   # (4, steps)
    assert ((pitch >= 0).mean(1) > 0.8).all()                                                  # all four sing
    means = [pitch[v][pitch[v] >= 0].mean() for v in range(4)]
    assert means[0] > means[1] > means[2] > means[3], means
    assert (mm.estimate_keys(rolls, CHORALE.lo) == (3, 0)).all()       # every clip in E flat major (first draws: 48 %)
    chroma = sum(mm.chroma(r, CHORALE.lo) for r in rolls)
    assert chroma[np.roll(mm.MAJOR, 3)].sum() / chroma.sum() > 0.85


def test_key_with_the_auto_model_uses_the_key_conditioned_model(tmp_path):
    from flows.music import PRETRAINED_KEY, sample_music

    report = sample_music(str(tmp_path), "auto", n=6, bars=4, key="E", seed=0)
    assert Path(report["model"]).name == PRETRAINED_KEY
    chroma = sum(mm.chroma(read_back(tmp_path / c["midi"], MELODY), MELODY.lo) for c in report["clips"])
    e_major = np.roll(mm.MAJOR, 4)
    assert chroma[e_major].sum() / chroma.sum() > 0.85          # E major's scale, not C's


def test_midi_files_carry_the_key_signature_of_the_clip(tmp_path):
    """--key D: notation apps read the key signature meta message (without one they show C major). Each clip's
    file holds the key its report entry gives (the asked key, spelled as asked, when the clip is in it); a
    silent roll has none; a key mido cannot write is a clear error."""
    from flows.music import parse_key, sample_music

    path = tmp_path / "d.mid"
    path.write_bytes(roll_to_midi(melody(), MELODY, key="D"))
    keys = [m.key for m in mido.MidiFile(path).tracks[0] if m.type == "key_signature"]
    assert keys == ["D"]
    path.write_bytes(roll_to_midi(melody(), MELODY))
    assert not any(m.type == "key_signature" for t in mido.MidiFile(path).tracks for m in t)
    with pytest.raises(ValueError, match="not a key signature"):
        roll_to_midi(melody(), MELODY, key="A#")
    for asked, spelled in (("D", "D"), ("Gb", "Gb")):             # Gb as asked, not the estimate's F#
        out = tmp_path / asked
        report = sample_music(str(out), "auto", n=4, bars=2, key=asked, seed=0)
        found = [[m.key for t in mido.MidiFile(out / c["midi"]).tracks for m in t if m.type == "key_signature"]
                 for c in report["clips"]]
        assert found == [[spelled if parse_key(c["key"]) == parse_key(asked) else c["key"]] for c in report["clips"]]
        assert sum(f == [spelled] for f in found) >= 3                   # the key asked, in the files


def test_key_with_a_plain_model_draws_the_mode_asked_and_reports_each_clips_key(tmp_path):
    """The plain melody model knows no key: clips in the other mode are drawn again, then all move to the tonic.
    report.json's in_key agrees with the key estimated from the MIDI files read back."""
    from flows.music import generate_rolls, load_music_model, resolve_music_model, sample_music

    report = sample_music(str(tmp_path), "music-melody-2bar", n=12, bars=4, key="Ebm", seed=0)
    assert Path(report["model"]).name == "music-melody-2bar"
    est = mm.estimate_keys(np.stack([read_back(tmp_path / c["midi"], MELODY) for c in report["clips"]]), MELODY.lo)
    k = report["in_key"]
    assert k["asked"] == "Ebm" and k["of"] == 12 and k["clips"] == int((est == (3, 1)).all(1).sum())
    assert k["clips"] + sum(k["others"].values()) == 12 and k["clips"] >= 10
    net, enc, window_bars, cols = load_music_model(resolve_music_model("music-melody-2bar", None))
    once = generate_rolls(net, enc, window_bars, 12, 4, 0, "Ebm", cols, key_rounds=0)   # moved, never redrawn
    assert (mm.estimate_keys(np.stack(once), enc.lo)[:, 1] == 1).sum() < k["clips"]       # most tunes are major


def test_clips_take_the_corpus_keys_and_all_keys_without_them():
    from flows.catalog import PRETRAINED
    from flows.music import PRETRAINED_MELODY, generate_rolls, load_music_model

    folder = PRETRAINED / PRETRAINED_MELODY
    counts = json.loads((folder / "config.json").read_text())["data"]["key_counts"]
    assert np.argmax(counts[0]) in (0, 2, 5, 7) and sum(map(sum, counts)) > 30_000   # Essen: mostly C D F G major
    net, enc, window_bars, cols = load_music_model(folder)
    only = np.zeros((2, 12))
    only[0, 2] = only[1, 11] = 1                                   # D major and B minor only
    keys = mm.estimate_keys(np.stack(generate_rolls(net, enc, window_bars, 40, 4, key_counts=only)), enc.lo)
    assert np.mean([(t, m) in ((2, 0), (11, 1)) for t, m in keys]) >= 0.9
    free = mm.estimate_keys(np.stack(generate_rolls(net, enc, window_bars, 40, 4)), enc.lo)
    assert len(set(free[:, 0])) >= 6                              # trained on all 12 transpositions


@pytest.mark.parametrize("args", [["music"], ["music", "train"], ["music", "sample"], ["music", "interpolate"],
                                  ["music", "stats"]])
def test_music_commands_have_help(args):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, args + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output and len(result.output.splitlines()) > 6


def test_instruments_by_general_midi_name_or_number(tmp_path):
    """--program takes a GM name (whole words first, so "bass" is a bass, not a bassoon) or 0-127; a bad one is a
    clear error before any work; the MIDI file carries the program asked for."""
    from typer.testing import CliRunner

    from flows.cli import app
    from formats.music import GM_PROGRAMS, parse_program

    assert len(GM_PROGRAMS) == 128 and GM_PROGRAMS[73] == "Flute" and GM_PROGRAMS[52] == "Choir Aahs"
    asked = {"flute": 73, "FLUTE": 73, "pan flute": 75, "piano": 0, "bass": 32, "choir": 52, "church-organ": 19,
             "violin": 40, "string": 48, "73": 73, "0": 0}
    assert {k: parse_program(k) for k in asked} == asked
    for bad in ("kazoo", "128", ""):
        with pytest.raises(ValueError, match="General MIDI"):
            parse_program(bad)
    result = CliRunner().invoke(app, ["music", "sample", "--program", "kazoo", str(tmp_path / "x")], terminal_width=200)
    assert result.exit_code != 0 and "--program" in result.output and "kazoo" in result.output
    assert not (tmp_path / "x").exists()
    path = tmp_path / "cello.mid"
    path.write_bytes(roll_to_midi(melody(), MELODY, programs=(parse_program("cello"),)))
    assert midi_to_roll(path, MELODY).programs == (42,)


def test_unknown_corpus_is_a_clear_error():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["music", "train", "--corpus", "nonesuch"], terminal_width=200)
    assert result.exit_code != 0 and "folder of MIDI files" in result.output and "nottingham" in result.output
    result = CliRunner().invoke(app, ["music", "train", "--ar", "-1"], terminal_width=200)
    assert result.exit_code != 0 and "--ar" in result.output and "number of steps" in result.output


def test_missing_nottingham_file_says_where_to_put_it_before_any_work(monkeypatch):
    from typer.testing import CliRunner

    import flows.music
    from flows.cli import app

    monkeypatch.setattr(flows.music, "NOTTINGHAM", ("data/nowhere/Nottingham.mat",))
    result = CliRunner().invoke(app, ["music", "train", "--corpus", "nottingham"])
    assert isinstance(result.exception, FileNotFoundError) and "data/nowhere/Nottingham.mat" in str(result.exception)


def nottingham_mat(path: Path) -> Path:
    """A Nottingham.mat in Boulanger-Lewandowski's layout: a 4/4 tune (a 3-eighth pickup, chords every 8 frames)
    and a jig (chords every 6 frames), one frame per eighth, column 0 = MIDI 21."""
    from scipy.io import savemat

    def roll(melody, bass):
        r = np.zeros((len(melody), 88), np.uint8)
        r[np.arange(len(melody)), np.array(melody) - 21] = 1
        r[np.arange(len(bass)), np.array(bass) - 21] = 1
        return r

    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    reel = roll([67] * 3 + scale * 4, [48] * 3 + [55] * 8 + [48] * 8 + [55] * 8 + [48] * 8)
    jig = roll([64, 64, 67, 65, 65, 69] * 4, ([48] * 6 + [55] * 6) * 2)
    cells = {}
    for split, seqs in (("train", [reel, jig]), ("valid", [reel]), ("test", [jig])):
        cells[f"{split}data"] = np.empty((1, len(seqs)), dtype=object)
        for i, q in enumerate(seqs):
            cells[f"{split}data"][0, i] = q
    savemat(path, cells)
    return path


def test_nottingham_mat_frames_are_eighths_with_bar_lines_from_the_chords(tmp_path):
    from flows.music import ingest_music, load_pieces

    folder = ingest_music(str(nottingham_mat(tmp_path / "Nottingham.mat")), "melody")
    manifest = folder.manifest
    assert manifest["counts"]["pieces"] == 4 and manifest["meters"] == {"4/4": 2, "6/8": 2}
    rolls, meters, names, enc = load_pieces(folder)
    reel = rolls[names.index("train/000")][0]
    assert meters[names.index("train/000")] == "4/4"
    assert reel[10] == tok(67) and (reel[11:16] == HOLD).all()        # the pickup ends at the first bar line
    assert reel[16] == tok(60) and reel[17] == HOLD and reel[18] == tok(62)   # eighths on the downbeat
    assert list(roll_to_notes(reel[None], enc.lo)[:, 2][:3]) == [6, 2, 2]
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(ValueError, match="junk.mat: not a Nottingham.mat"):
        ingest_music(str(tmp_path / "junk.mat"), "melody")
    with pytest.raises(ValueError, match="--mode melody"):
        ingest_music(str(tmp_path / "Nottingham.mat"), "chorale")
