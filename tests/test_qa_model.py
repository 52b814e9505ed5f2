"""The question-answering model (training/qa/model.py): shapes, the presence mask and the padding mask."""

from __future__ import annotations

import pytest
import torch
from fusionedge.sdk.errors import InputError
from fusionedge.training.models.multimodal import ModelConfig, MultimodalModel
from fusionedge.training.qa.model import QAModel, QuestionReader, reader_config_for


def tiny_student() -> MultimodalModel:
    torch.manual_seed(0)
    cfg = ModelConfig(clip_frames=2, height=32, width=48, audio_samples=2000, sample_rate=8000, n_fft=200,
                      hop_length=80, n_mels=16, f_max=4000.0, video_channels=(4, 8, 8, 16), video_depth=0,
                      audio_channels=(4, 8, 16), audio_depth=0, audio_dim=16, fusion="aligned_attention",
                      fusion_dim=16, fusion_heads=2, head_hidden=16, det_channels=8)
    return MultimodalModel(cfg).eval()


@pytest.fixture(scope="module")
def model() -> QAModel:
    student = tiny_student()
    rc = reader_config_for(student, vocab_size=30, max_tokens=6, num_answers=5, dim=16, heads=2, layers=1)
    return QAModel(student, QuestionReader(rc)).eval()


def inputs(b: int = 3):
    g = torch.Generator().manual_seed(1)
    video = torch.randn(b, 2, 3, 32, 48, generator=g)
    audio = torch.rand(b, 2000, generator=g) - 0.5
    ids = torch.randint(3, 30, (b, 6), generator=g)
    mask = torch.ones(b, 6)
    ids[:, 0] = 2
    ids[:, 4:] = 0
    mask[:, 4:] = 0
    return video, audio, torch.ones(b, 2), ids, mask


def test_shapes_and_context(model):
    video, audio, presence, ids, mask = inputs()
    out = model(video, audio, presence, ids, mask)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    ctx = model.context(video, audio)
    c = model.reader.config
    assert ctx["cells"].shape == (3, c.cell_tokens, c.cell_dim) and c.cell_tokens == (32 // 16) * (48 // 16)
    assert ctx["frames"].shape == (3, 2, c.frame_dim) and ctx["tags"].shape == (3, 4)


@torch.no_grad()
def test_an_absent_modality_changes_nothing_and_a_present_one_does(model):
    video, audio, presence, ids, mask = inputs()
    other_video, other_audio = torch.randn_like(video), torch.rand_like(audio) - 0.5
    for absent, swap in ((0, lambda: (other_video, audio)), (1, lambda: (video, other_audio))):
        pres = presence.clone()
        pres[:, absent] = 0
        base = model(video, audio, pres, ids, mask)
        assert torch.equal(base, model(*swap(), pres, ids, mask))  # masked out of attention: exactly nothing
        assert not torch.allclose(model(video, audio, presence, ids, mask),
                                  model(*swap(), presence, ids, mask), atol=1e-6)


@torch.no_grad()
def test_padding_tokens_are_ignored_and_question_words_are_not(model):
    video, audio, presence, ids, mask = inputs()
    changed_pad = ids.clone()
    changed_pad[:, 4:] = 7
    assert torch.equal(model(video, audio, presence, ids, mask), model(video, audio, presence, changed_pad, mask))
    changed_word = ids.clone()
    changed_word[:, 1] = (ids[:, 1] + 1) % 30
    assert not torch.allclose(model(video, audio, presence, ids, mask),
                              model(video, audio, presence, changed_word, mask), atol=1e-6)


def test_the_student_is_frozen_and_stays_in_eval_mode(model):
    model.train()
    assert not model.student.training and model.reader.training
    assert all(not p.requires_grad for p in model.student.parameters())
    assert all(p.requires_grad for p in model.reader.parameters())
    model.eval()


def test_kept_contexts_take_the_ids_of_this_runs_tokenizer():
    """Each run learns its own vocabulary, so questions from a kept context file are encoded again."""
    from fusionedge.training.qa.data import QAExamples, encode_questions
    from fusionedge.training.qa.vocab import train_tokenizer

    questions = ("is there a car?", "how many pedestrians are there?", "can you hear a siren?")
    _, first = train_tokenizer(questions, max_tokens=8)
    _, other = train_tokenizer(("zebra crossing ahead?", "what colour is the light?", *questions), max_tokens=8)
    ids, mask = first.encode_batch(list(questions))
    ex = QAExamples(context={}, presence=torch.ones(1, 2), clip=torch.zeros(3, dtype=torch.int64),
                    ids=torch.from_numpy(ids), mask=torch.from_numpy(mask), answer=torch.zeros(3, dtype=torch.int64),
                    types=("exist", "count", "hear"), questions=questions, answers=("yes", "2", "maybe"),
                    clip_ids=("a",))
    again = encode_questions(ex, other, ("no", "yes", "2"))
    want_ids, want_mask = other.encode_batch(list(questions))
    assert torch.equal(again.ids, torch.from_numpy(want_ids)) and torch.equal(again.mask, torch.from_numpy(want_mask))
    assert not torch.equal(again.ids, ex.ids)  # the two vocabularies number the pieces differently
    assert again.answer.tolist() == [1, 2, -1]  # an answer outside the vocabulary is marked, not guessed


def test_two_peaks_in_one_stride16_cell_count_as_two():
    """The stride-16 pool merged two objects in one cell; the stride-4 peaks the decoder finds do not."""
    from fusionedge.training.qa.scene_features import peak_counts

    heat = torch.full((1, 4, 8, 12), 0.02)
    heat[0, 0, 1, 1], heat[0, 0, 2, 3] = 0.9, 0.8  # two cars, both in the first 4x4 block (one 16-px cell)
    heat[0, 1, 5, 5] = 0.25  # below the decoder's threshold: not a pedestrian
    heat[0, 2, 6, 2] = heat[0, 2, 6, 3] = 0.7  # a plateau: both equal their 3x3 max, counted as the decoder does
    for x in range(0, 12, 2):
        heat[0, 3, 0, x] = 0.95  # six emergency vehicles: clipped at the largest answer, 3
    assert peak_counts(heat).tolist() == [[2.0, 0.0, 2.0, 3.0]]
    assert torch.nn.functional.max_pool2d(heat, 4, 4)[0, 0].gt(0.3).sum() == 1  # what the old feature saw


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406)).reshape(1, 1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).reshape(1, 1, 3, 1, 1)
    return (pixels - mean) / std


@pytest.mark.parametrize(("colour", "channel", "row"), [((1.0, 0.16, 0.12), 0, 16), ((0.16, 1.0, 0.47), 1, 21)])
def test_the_lamp_colour_and_height_come_from_the_pixels_under_the_traffic_light_heat(colour, channel, row):
    """A dark housing with one lit lamp under the traffic-light heat, and a brighter white sky elsewhere."""
    from fusionedge.training.qa.scene_features import scene_features

    pixels = torch.full((1, 2, 3, 32, 48), 0.2)
    pixels[..., :6, :] = 1.0  # bright sky, far from the light: must not be read as the lamp
    pixels[:, :, :, 13:24, 32:37] = 0.1  # the housing, centred on row 18
    pixels[:, :, :, row - 1:row + 1, 33:36] = torch.tensor(colour).reshape(1, 1, 3, 1, 1)
    heat = torch.full((1, 4, 8, 12), 0.02)
    heat[0, 2, 4, 8] = 0.9  # the traffic light's centre: stride-4 cell (4, 8) covers pixels 16-19, 32-35
    scene = scene_features(_normalised(pixels), torch.zeros(1, 2000), heat, 2, 3)[0]
    chroma, height = scene[4:7], scene[7]
    assert chroma.argmax().item() == channel and chroma[channel] > 0.5
    assert (height > 0.15) if row < 18 else (height < -0.15)  # the red lamp is the top one, green the bottom


def test_motion_features_grow_with_the_light_bar_and_the_sound():
    from fusionedge.training.qa.scene_features import scene_features

    pixels = torch.full((1, 4, 3, 32, 48), 0.3)
    for t in range(4):  # a red light bar that grows frame by frame
        pixels[0, t, :, 14:16 + t, 20:24 + 2 * t] = torch.tensor((1.0, 0.1, 0.1)).reshape(3, 1, 1)
    heat = torch.full((1, 4, 8, 12), 0.02)
    heat[0, 3, 4, 5] = 0.9
    audio = torch.sin(torch.arange(3000.0)) * torch.linspace(0.1, 1.0, 3000)  # louder at the end
    approaching = scene_features(_normalised(pixels), audio[None], heat, 2, 3, version=2)[0, -3:]
    receding = scene_features(_normalised(pixels.flip(1)), audio.flip(0)[None], heat, 2, 3, version=2)[0, -3:]
    assert (approaching > 0.2).all() and (receding < -0.2).all()


@torch.no_grad()
def test_a_reader_saved_before_the_scene_features_ignores_them_and_a_new_one_reads_them(model):
    from fusionedge.training.qa.model import QAConfig

    old = model.reader.config.to_dict()
    assert old["scene_dim"] > 0
    del old["scene_dim"]  # a config written before the field existed
    assert QAConfig.from_dict(old).scene_dim == 0
    video, audio, presence, ids, mask = inputs()
    ctx = model.context(video, audio)
    args = [ctx[k] for k in ("cells", "frames", "audio", "tags")]
    other = torch.rand_like(ctx["scene"])
    torch.manual_seed(0)
    before = QuestionReader(QAConfig.from_dict(old)).eval()
    assert torch.equal(before(*args, ctx["scene"], presence, ids, mask), before(*args, other, presence, ids, mask))
    assert not torch.allclose(model.reader(*args, ctx["scene"], presence, ids, mask),
                              model.reader(*args, other, presence, ids, mask), atol=1e-6)


def test_peak_heights_are_the_highest_peaks_per_class_sorted_and_zero_past_the_last():
    from fusionedge.training.qa.scene_features import PEAKS_KEPT, peak_heights

    heat = torch.full((1, 2, 8, 12), 0.02)
    heat[0, 0, 1, 1], heat[0, 0, 5, 8], heat[0, 0, 6, 2] = 0.35, 0.9, 0.2
    heat[0, 0, 1, 2] = 0.3  # next to the 0.35 peak: not a peak of its own
    heat[0, 1] = 0.0
    heat[0, 1, 4, 4] = 0.6
    got = peak_heights(heat)
    assert got.shape == (1, 2, PEAKS_KEPT)
    assert torch.allclose(got[0, 0, :3], torch.tensor([0.9, 0.35, 0.2])) and (got[0, 0, 3:] <= 0.02 + 1e-6).all()
    assert torch.allclose(got[0, 1], torch.tensor([0.6] + [0.0] * (PEAKS_KEPT - 1)))


def _vehicle_frames(scales: tuple[float, ...], shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """A vehicle-like 18x14-pixel patch of coloured blocks centred at (40, 24) of an 80x48 grey road,
    one frame per scale, the last frame shifted by ``shift`` (camera jitter) → pixels (1, T, 3, 48, 80)."""
    g = torch.Generator().manual_seed(3)
    blocks = torch.rand(3, 5, 6, generator=g) * 0.8 + 0.1
    frames = []
    for i, s in enumerate(scales):
        h, w = round(14 * s), round(18 * s)
        patch = torch.nn.functional.interpolate(blocks[None], size=(h, w), mode="bilinear")[0]
        frame = torch.full((3, 48, 80), 0.45)
        dy, dx = shift if i == len(scales) - 1 else (0, 0)
        y0, x0 = 24 - h // 2 + dy, 40 - w // 2 + dx
        frame[:, y0:y0 + h, x0:x0 + w] = patch
        frames.append(frame)
    return torch.stack(frames)[None]


@pytest.mark.parametrize(("scales", "sign"), [((1.0, 1.05, 1.1, 1.18), 1), ((1.18, 1.1, 1.05, 1.0), -1),
                                              ((1.0, 1.0, 1.0, 1.0), 0)])
def test_the_vehicle_scale_change_follows_its_size_between_the_first_and_the_last_frame(scales, sign):
    from fusionedge.training.qa.scene_features import ev_scale_change

    heat = torch.full((1, 1, 12, 20), 0.02)
    heat[0, 0, 6, 10] = 0.9  # the vehicle's centre at stride 4
    scale, ncc = ev_scale_change(_vehicle_frames(scales, shift=(1, -2)), heat)[0].tolist()
    assert ncc > 0.8  # one of the candidates matches
    if sign == 0:
        assert abs(scale) < 0.1
    else:  # log(1.18) = 0.166, over the 0.3 searched: 0.55 (the softmax pulls a shrink toward 0: 0.32)
        assert sign * scale > 0.2


def _ev_scale_change_candidate_by_candidate(pixels: torch.Tensor, ev_heat: torch.Tensor) -> torch.Tensor:
    """ev_scale_change as its docstring says it, every candidate patch materialised: the grey crops by a grid
    sampler, each scale and shift a zoomed patch of the first crop, its normalised correlation with the
    last crop's window."""
    import math

    from fusionedge.training.qa import scene_features as sf

    b, _, _, hh, ww = pixels.shape
    h, w = ev_heat.shape[-2:]
    weight = torch.softmax(30.0 * ev_heat.flatten(1), dim=1)
    ys = ((torch.arange(h, dtype=pixels.dtype)[:, None].expand(h, w).reshape(-1) + 0.5) * (hh / h))
    xs = ((torch.arange(w, dtype=pixels.dtype)[None, :].expand(h, w).reshape(-1) + 0.5) * (ww / w))
    cx, cy = (weight * xs).sum(1), (weight * ys).sum(1)
    crop, win = sf._SCALE_CROP, sf._SCALE_WINDOW
    r = torch.arange(crop, dtype=pixels.dtype) - (crop - 1) / 2
    gx = ((cx[:, None] + r[None, :]) / ww * 2.0 - 1.0)[:, None, :].expand(b, crop, crop)
    gy = ((cy[:, None] + r[None, :]) / hh * 2.0 - 1.0)[:, :, None].expand(b, crop, crop)
    crops = torch.nn.functional.grid_sample(pixels[:, [0, -1]].mean(dim=2), torch.stack([gx, gy], dim=-1),
                                            mode="bilinear", padding_mode="border", align_corners=False)
    o = (crop - win) // 2
    t = crops[:, 1, o:o + win, o:o + win]
    t = t - t.mean(dim=(1, 2), keepdim=True)
    logs = [sf._SCALE_SPAN * (2.0 * i / (sf._SCALES - 1) - 1.0) for i in range(sf._SCALES)]
    best = []
    for a in logs:
        rows = [sf._bilinear_rows(win, crop, math.exp(-a), float(d)).to(pixels.dtype)
                for d in range(-sf._SCALE_SHIFT, sf._SCALE_SHIFT + 1)]
        nccs = []
        for ry in rows:
            for rx in rows:
                cand = ry @ crops[:, 0] @ rx.T
                cand = cand - cand.mean(dim=(1, 2), keepdim=True)
                den = t.pow(2).sum(dim=(1, 2)).sqrt() * cand.pow(2).sum(dim=(1, 2)).sqrt() + 1e-6
                nccs.append((t * cand).sum(dim=(1, 2)) / den)
        best.append(torch.stack(nccs, dim=1).amax(dim=1))
    ncc = torch.stack(best, dim=1)
    scale = (torch.softmax(sf._SCALE_BETA * ncc, dim=1) * torch.tensor(logs, dtype=pixels.dtype)).sum(1) / sf._SCALE_SPAN
    return torch.stack([scale, ncc.amax(dim=1)], dim=1)


def test_the_vehicle_scale_change_equals_matching_every_candidate_patch():
    from fusionedge.training.qa.scene_features import ev_scale_change

    g = torch.Generator().manual_seed(5)
    # a growing vehicle near the frame's left edge (its crop samples past the border) and random texture
    vehicle = _vehicle_frames((1.0, 1.05, 1.1, 1.18), shift=(1, -2)).double()
    noise = torch.rand(1, 4, 3, 48, 80, generator=g, dtype=torch.float64)
    pixels = torch.cat([vehicle, 0.7 * vehicle + 0.3 * noise])
    heat = torch.full((2, 1, 12, 20), 0.02, dtype=torch.float64)
    heat[0, 0, 6, 10] = 0.9
    heat[1, 0, 3, 1] = 0.9
    fast = ev_scale_change(pixels, heat)
    direct = _ev_scale_change_candidate_by_candidate(pixels, heat)
    assert fast.shape == (2, 2)
    torch.testing.assert_close(fast, direct, rtol=0.0, atol=1e-9)


def test_the_siren_band_trend_follows_the_siren_and_not_a_louder_hum_below_its_band():
    from fusionedge.training.qa.scene_features import siren_band_trend

    t = torch.arange(8000.0) / 8000
    siren = torch.sin(2 * torch.pi * (700 * t + 150 * torch.sin(2 * torch.pi * 2 * t) / (2 * torch.pi * 2)))
    growing = siren * torch.linspace(0.1, 1.0, 8000)
    hum = torch.sin(2 * torch.pi * 60 * t)
    got = siren_band_trend(torch.stack([growing, growing.flip(0), 0.3 * siren + hum * torch.linspace(0.1, 3.0, 8000)]), 8000)
    assert got[0] > 1.0 and got[1] < -1.0  # log power: x10 in amplitude is about 4.6
    assert abs(got[2]) < 0.5  # a steady siren under a growing 60 Hz hum


@torch.no_grad()
def test_a_reader_of_the_version_2_features_is_given_them_and_a_new_one_the_current_ones(model):
    from fusionedge.training.qa.model import QAConfig
    from fusionedge.training.qa.scene_features import SCENE_FEATURES_VERSION, scene_dim

    config = model.reader.config.to_dict()
    assert config["scene_version"] == SCENE_FEATURES_VERSION == 3
    assert config["scene_dim"] == scene_dim(4, 3) == 4 + 4 * 5 + 10
    video, audio, *_ = inputs()
    old = {**config, "scene_dim": scene_dim(4, 2)}
    del old["scene_version"]  # a config written before the field existed: version 2
    old_model = QAModel(model.student, QuestionReader(QAConfig.from_dict(old))).eval()
    old_scene, new_scene = old_model.context(video, audio)["scene"], model.context(video, audio)["scene"]
    assert old_scene.shape == (3, 11) and new_scene.shape == (3, config["scene_dim"])
    # version 3 keeps version 2's video values first and its audio value before the siren's
    assert torch.equal(new_scene[:, :10], old_scene[:, :10]) and torch.equal(new_scene[:, -2], old_scene[:, -1])
    with pytest.raises(InputError, match="scene_version"):
        QAConfig.from_dict({**config, "scene_version": 7})
