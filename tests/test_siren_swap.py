"""Siren swap: a generator clip's siren and untagged sound taken apart from the rest of its sound, and
batches that swap them."""

from __future__ import annotations

import dataclasses
import json
import wave

import numpy as np
import pytest
import torch
from fusionedge.sdk.datamanifest import read_manifest
from fusionedge.sdk.errors import DataError, FusionEdgeError
from fusionedge.sdk.spec import AUDIO_TAGS, EVENTS, InputGeometry
from fusionedge.training.audio_resynth import render_sound_again, scene_of
from fusionedge.training.dataset import Augment, iterate_batches, load_clips
from fusionedge.training.siren_swap import siren_swap_parts
from fusionedge.training.sound_naming import sound_names_of
from fusionedge.training.synth import rules
from fusionedge.training.synth.dsp import rms
from fusionedge.training.synth.sound import synthesize_audio, synthesize_audio_parts
from fusionedge.training.train import TrainConfig, train
from _precision_fixtures import synth_data
from _tiny_train import TINY

GEOMETRY = InputGeometry()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synth_data(tmp_path_factory)  # 24 generator clips, shared with the precision tests


def test_the_parts_render_the_same_wave_and_the_siren_at_its_drawn_level(monkeypatch):
    from fusionedge.training.synth import sound

    seen = {"siren": 0, "band_limited_siren": 0, "band_limit_mattered": 0, "silent": 0, "clutter": 0}
    for i in range(160):
        flags = rules.sample_flags(np.random.default_rng([3, i]))
        wave_, info = synthesize_audio(flags, np.random.default_rng([4, i]))
        parts = synthesize_audio_parts(flags, np.random.default_rng([4, i]))
        assert np.array_equal(parts.wave, wave_) and parts.info == info  # the same stream, the same sound
        if info.clutter_sound is None:
            assert not parts.clutter.any()
        elif info.band_limit_hz is None:
            seen["clutter"] += 1  # the untagged sound at its drawn level, and nothing of it left once taken away
            level = 20 * np.log10(rms(parts.clutter) / parts.road_rms)
            assert level == pytest.approx(info.levels_db["clutter"], abs=1e-6)
            rest = parts.wave - parts.clutter
            assert abs(np.dot(rest, parts.clutter)) < 0.5 * np.dot(parts.clutter, parts.clutter)
        if info.ambience == "silent":
            seen["silent"] += 1
            assert parts.road_rms == 0.0 and not parts.siren.any()
        elif not flags.siren:
            assert not parts.siren.any() and parts.road_rms > 0
        elif info.band_limit_hz is None:
            seen["siren"] += 1
            # the siren sits at its drawn level against the road noise, both at the recording level
            level = 20 * np.log10(rms(parts.siren) / parts.road_rms)
            assert level == pytest.approx(info.levels_db["siren"], abs=1e-6)
            # and taking it away leaves a sound with no siren energy left in it
            rest = parts.wave - parts.siren
            assert abs(np.dot(rest, parts.siren)) < 0.5 * np.dot(parts.siren, parts.siren)
        else:
            seen["band_limited_siren"] += 1
            # the siren part went through the recording's low-pass: the same scene rendered full-band
            # (the band draw is the stream's last), filtered here, gives it back
            with monkeypatch.context() as m:
                m.setattr(sound, "P_BAND_LIMITED", 0.0)
                full = synthesize_audio_parts(flags, np.random.default_rng([4, i]))
            n = len(full.siren)
            response = 1 / np.sqrt(1 + (np.fft.rfftfreq(n, 1 / 16000) / info.band_limit_hz) ** 16)
            expected = np.fft.irfft(np.fft.rfft(full.siren) * response, n) * (parts.road_rms / full.road_rms)
            assert np.abs(parts.siren - expected).max() < 0.01 * np.abs(expected).max()
            full_band = full.siren * (parts.road_rms / full.road_rms)
            seen["band_limit_mattered"] += np.abs(expected - full_band).max() > 0.05 * np.abs(expected).max()
    assert all(v > 0 for v in seen.values()), seen


def test_each_row_splits_into_its_rest_and_its_siren_exactly(data_dir):
    rows = read_manifest(data_dir)
    swap = siren_swap_parts(rows, EVENTS, AUDIO_TAGS, GEOMETRY, progress=False, clutter=True)
    clips = load_clips(rows, GEOMETRY, progress=False)
    donors = swap.donors.tolist()
    assert len(donors) > 0 and swap.siren.shape == (len(donors), GEOMETRY.audio_samples)
    for i, row in enumerate(rows):
        flags, _, rng = scene_of(row)
        info = synthesize_audio_parts(flags, rng).info
        eligible = info.ambience != "silent" and info.band_limit_hz is None
        assert bool(swap.eligible[i]) == eligible
        assert bool(swap.lights[i]) == flags.lights_on_ev
        assert EVENTS[int(swap.event_with[i])] == rules.event_from_cues(True, flags.lights_on_ev)
        assert EVENTS[int(swap.event_without[i])] == rules.event_from_cues(False, flags.lights_on_ev)
        if not eligible:
            continue
        whole = swap.rest[i] + (swap.siren[donors.index(i)] if i in donors else 0.0)
        assert torch.allclose(whole, clips.audio[i], atol=1e-6)  # rest + siren is the stored sound
        assert (i in donors) == flags.siren
        own = int(swap.clutter_of[i])
        assert (own >= 0) == (info.clutter_sound is not None)
        if own >= 0:  # the untagged sound is part of the rest, and taking it away lowers its energy by its own
            assert int(swap.clutter_donors[own]) == i
            without = swap.rest[i] - swap.clutter[own]
            energy = [float(x.pow(2).sum()) for x in (swap.rest[i], without, swap.clutter[own])]
            assert energy[0] == pytest.approx(energy[1] + energy[2], rel=0.25) and energy[1] < energy[0]
    assert swap.siren_tag == AUDIO_TAGS.index("siren")
    assert all(0.0 <= r <= 1.0 for r in swap.siren_rate)
    # processes give the same parts
    again = siren_swap_parts(rows, EVENTS, AUDIO_TAGS, GEOMETRY, workers=2, progress=False, clutter=True)
    assert torch.equal(again.rest, swap.rest) and torch.equal(again.siren, swap.siren)
    assert torch.equal(again.clutter, swap.clutter) and 0.0 < swap.clutter_rate < 1.0
    # a plain siren swap keeps no untagged sound, and its other parts are the same
    plain = siren_swap_parts(rows, EVENTS, AUDIO_TAGS, GEOMETRY, progress=False)
    assert plain.clutter.shape[0] == 0 and bool((plain.clutter_of == -1).all()) and plain.clutter_rate == 0.0
    assert torch.equal(plain.rest, swap.rest) and torch.equal(plain.siren, swap.siren)


def test_a_swapped_draw_hears_the_rest_with_or_without_a_siren_and_its_labels_follow(data_dir):
    rows = read_manifest(data_dir)
    clips = load_clips(rows, GEOMETRY, progress=False)
    swap = siren_swap_parts(rows, EVENTS, AUDIO_TAGS, GEOMETRY, progress=False)
    clips = dataclasses.replace(clips, siren_swap=swap)
    aug = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0, siren_swap=1.0)
    gen = torch.Generator().manual_seed(0)
    tag = swap.siren_tag
    flipped, on_count, eligible_draws = 0, 0, 0
    for _ in range(40):
        for batch in iterate_batches(clips, len(rows), shuffle=True, generator=gen, augment=aug):
            for j, i in enumerate(batch["index"].tolist()):
                audio, event, siren = batch["audio"][j], int(batch["event"][j]), float(batch["audio_tags"][j, tag])
                others = [t for t in range(len(AUDIO_TAGS)) if t != tag]
                assert torch.equal(batch["audio_tags"][j, others], clips.audio_tags[i, others])  # other tags kept
                if not swap.eligible[i]:
                    assert torch.equal(audio, clips.audio[i]) and event == int(clips.event[i])
                    continue
                eligible_draws += 1
                on_count += siren == 1.0
                if siren == 0.0:  # no siren: the rest of the scene, exactly (scaled down only if it was too loud)
                    assert event == int(swap.event_without[i])
                    peak = swap.rest[i].abs().max()
                    assert torch.allclose(audio, swap.rest[i] / max(1.0, float(peak) / 0.99), atol=1e-7)
                else:  # a siren: the rest plus some donor's siren at this clip's road level
                    assert event == int(swap.event_with[i])
                    added = audio - swap.rest[i]
                    assert float(added.abs().max()) > 0
                    gains = swap.road_rms[i] / swap.road_rms[swap.donors]
                    err = [float((added - g * s).abs().max()) for g, s in zip(gains, swap.siren)]
                    assert min(err) < 1e-5 or float(audio.abs().max()) == pytest.approx(0.99, abs=1e-6)
                flipped += event != int(clips.event[i])
    assert flipped > 0
    # the siren is drawn at the split's own rate (about half of the generator's scenes)
    rate = on_count / eligible_draws
    expected = float(np.mean(swap.siren_rate))
    assert abs(rate - expected) < 0.1, (rate, swap.siren_rate)
    plain = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0)
    batch = next(iterate_batches(clips, len(rows), generator=torch.Generator().manual_seed(0), augment=plain))
    assert torch.equal(batch["audio"], clips.audio) and torch.equal(batch["event"], clips.event)  # option off


def test_a_clutter_swap_hears_another_untagged_sound_or_none_and_changes_no_label(data_dir):
    rows = read_manifest(data_dir)
    clips = load_clips(rows, GEOMETRY, progress=False)
    swap = siren_swap_parts(rows, EVENTS, AUDIO_TAGS, GEOMETRY, progress=False, clutter=True)
    names = sound_names_of(rows)  # each row's own untagged sound, named
    clips = dataclasses.replace(clips, siren_swap=swap, sound_names=names)
    gains = swap.road_rms[:, None] / swap.road_rms[None, :]  # (to row, from row)
    sirens = [torch.zeros(GEOMETRY.audio_samples)] + list(swap.siren)
    siren_rows = [None] + swap.donors.tolist()
    clutters = [torch.zeros(GEOMETRY.audio_samples)] + list(swap.clutter)
    clutter_rows = [None] + swap.clutter_donors.tolist()
    heard, drawn, own_kept = 0, 0, 0
    for seed in range(12):
        with_clutter = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0, siren_swap=1.0, clutter_swap=1.0)
        plain = Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0, siren_swap=1.0)
        batch = next(iterate_batches(clips, len(rows), generator=torch.Generator().manual_seed(seed),
                                     augment=with_clutter))
        same = next(iterate_batches(clips, len(rows), generator=torch.Generator().manual_seed(seed), augment=plain))
        # the labels are the siren swap's own: the untagged sound decides nothing
        assert torch.equal(batch["event"], same["event"]) and torch.equal(batch["audio_tags"], same["audio_tags"])
        for j, i in enumerate(batch["index"].tolist()):
            audio = batch["audio"][j]
            if not swap.eligible[i]:
                assert torch.equal(audio, clips.audio[i]) and batch["sound_name"][j] == names[i]
                continue
            if float(audio.abs().max()) >= 0.99 - 1e-6:
                continue  # scaled down to full scale: the sum is not recoverable term by term
            own = int(swap.clutter_of[i])
            base = swap.rest[i] - (swap.clutter[own] if own >= 0 else 0.0)
            siren_on = float(batch["audio_tags"][j, swap.siren_tag]) == 1.0
            # rest, less its own untagged sound, plus one donor's siren (or none) and one row's untagged sound
            # (or none), each at this clip's road level
            err, which = min(
                ((float((audio - base - (gains[i, sr] * s if sr is not None else 0.0)
                        - (gains[i, cr] * c if cr is not None else 0.0)).abs().max()), cr)
                 for sr, s in zip(siren_rows, sirens) if (sr is not None) == siren_on
                 for cr, c in zip(clutter_rows, clutters)), key=lambda t: t[0])
            assert err < 1e-5
            # the draw's name of its untagged sound is that of the sound it hears
            assert int(batch["sound_name"][j]) == (0 if which is None else int(names[which]))
            drawn += 1
            heard += which is not None
            own_kept += which == i
    assert drawn > 50 and own_kept < drawn
    assert swap.clutter_kind.tolist() == names[swap.clutter_donors].tolist()
    assert abs(heard / drawn - swap.clutter_rate) < 0.2, (heard / drawn, swap.clutter_rate)


def test_rows_the_generator_did_not_make_and_tasks_without_its_labels_are_refused(data_dir, tmp_path):
    rows = read_manifest(data_dir)
    row = next(r for r in rows if r.event != "none")
    with pytest.raises(DataError, match=f"sample '{row.id}': .*has event .*edited"):
        siren_swap_parts([dataclasses.replace(row, event="none")], EVENTS, AUDIO_TAGS, GEOMETRY, progress=False)
    forged = tmp_path / "forged.wav"
    with wave.open(str(forged), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(render_sound_again(row, 0).astype("<i2").tobytes())  # the scene, but another rendering
    with pytest.raises(DataError, match=f"sample '{row.id}': rendering its scene again does not give"):
        siren_swap_parts([dataclasses.replace(row, audio=forged)], EVENTS, AUDIO_TAGS, GEOMETRY, progress=False)
    with pytest.raises(DataError, match="lacks siren"):
        siren_swap_parts(rows, EVENTS, ("horn", "speech"), GEOMETRY, progress=False)
    with pytest.raises(DataError, match="lacks lights_no_siren"):
        siren_swap_parts(rows, EVENTS[:3], AUDIO_TAGS, GEOMETRY, progress=False)
    silent_only = [r for r in rows if r.event in ("none", "lights_no_siren")]
    with pytest.raises(DataError, match="no training clip with a siren"):
        siren_swap_parts(silent_only, EVENTS, AUDIO_TAGS, GEOMETRY, progress=False)


def test_bad_probabilities_and_a_teacher_are_refused(tmp_path):
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(FusionEdgeError, match="siren_swap"):
            TrainConfig(data=tmp_path, out=tmp_path / "r", siren_swap=bad)
    with pytest.raises(FusionEdgeError, match="teacher"):
        TrainConfig(data=tmp_path, out=tmp_path / "r", siren_swap=0.5, teacher=tmp_path / "t.pt")
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(FusionEdgeError, match="clutter_swap"):
            TrainConfig(data=tmp_path, out=tmp_path / "r", siren_swap=0.5, clutter_swap=bad)
    with pytest.raises(FusionEdgeError, match="clutter_swap=0.5 without siren_swap"):
        TrainConfig(data=tmp_path, out=tmp_path / "r", clutter_swap=0.5)


def test_a_run_with_siren_swap_trains_and_records_it(data_dir, tmp_path):
    run = train(TrainConfig(data=data_dir, out=tmp_path / "run", model_overrides=TINY, epochs=1, batch_size=8,
                            progress=False, report=False, siren_swap=0.5))
    assert np.isfinite(run["history"][-1]["train"]["loss"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["siren_swap"] == 0.5


def test_a_task_without_a_siren_tag_is_refused_before_anything_is_written(data_dir, tmp_path):
    from fusionedge.sdk.datamanifest import write_manifest

    rows = [dataclasses.replace(r, audio_tags=tuple(t for t in r.audio_tags if t != "siren"))
            for r in read_manifest(data_dir)]
    write_manifest(tmp_path / "manifest.jsonl", rows)
    labels = tmp_path / "task.json"
    labels.write_text(json.dumps({"events": list(EVENTS), "audio_tags": ["horn", "speech", "engine"],
                                  "objects": []}))
    with pytest.raises(FusionEdgeError, match="siren_swap needs .*lacks siren"):
        train(TrainConfig(data=tmp_path / "manifest.jsonl", out=tmp_path / "run", model_overrides=TINY, epochs=1,
                          progress=False, report=False, siren_swap=0.5, labels=labels))
    assert not (tmp_path / "run").exists()
    # with the generator's labels the edited rows themselves are refused, naming one, and nothing is written
    with pytest.raises(DataError, match="sample '.*': its scene re-derived .*edited"):
        train(TrainConfig(data=tmp_path / "manifest.jsonl", out=tmp_path / "run", model_overrides=TINY, epochs=1,
                          progress=False, report=False, siren_swap=0.5))
    assert not (tmp_path / "run").exists()


def test_the_train_verb_takes_siren_swap_and_refuses_a_bad_one(data_dir, tmp_path, capsys):
    from fusionedge.cli.main import main

    tiny = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--siren-swap", "0.5", "--clutter-swap", "1", "--set", "audio_pitch_motion=true", *tiny,
                 "--json"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["siren_swap"] == 0.5 and config["model_config"]["audio_pitch_motion"] is True
    assert config["train"]["clutter_swap"] == 1.0
    capsys.readouterr()
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "bad"), "--siren-swap", "2",
                 *tiny, "--json"]) == 2
    assert "siren_swap=2.0" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_shard_of_the_split_swaps_the_sirens_of_its_own_rows(data_dir):
    # torchrun gives each rank a copy of its share of the rows: a swap must still hear each row's own scene
    from fusionedge.training.distributed import take_clips

    rows = read_manifest(data_dir)
    swap = siren_swap_parts(rows, EVENTS, AUDIO_TAGS, GEOMETRY, progress=False, clutter=True)
    clips = dataclasses.replace(load_clips(rows, GEOMETRY, progress=False), siren_swap=swap)
    order = torch.arange(len(rows)).flip(0)[::2]  # every other row, backwards
    shard = take_clips(clips, order)
    checked = 0
    for seed in range(4):
        batch = next(iterate_batches(shard, len(order), generator=torch.Generator().manual_seed(seed),
                                     augment=Augment(modality_dropout=0.0, hflip=0.0, audio_gain_db=0.0,
                                                     siren_swap=1.0)))
        for j, p in enumerate(batch["index"].tolist()):
            g = int(order[p])  # the row of the whole split
            assert torch.equal(batch["video"][j], clips.video[g])
            if not swap.eligible[g]:
                assert torch.equal(batch["audio"][j], clips.audio[g])
                continue
            siren_on = bool(batch["audio_tags"][j, swap.siren_tag])
            assert int(batch["event"][j]) == int((swap.event_with if siren_on else swap.event_without)[g])
            if not siren_on and float(batch["audio"][j].abs().max()) < 0.99 - 1e-6:
                assert torch.equal(batch["audio"][j], swap.rest[g])  # the rest of this row's own scene
                checked += 1
    assert checked > 3
