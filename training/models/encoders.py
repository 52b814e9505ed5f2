"""Per-modality encoders: a clip (video) encoder and an audio encoder.

Both turn one modality into *tokens* (for fusion) and feature maps (for the heads). Shapes are noted
inline; ``B`` batch, ``T`` frames, ``N`` tokens. Nothing here branches on tensor values, so the
modules export to ONNX with a dynamic batch.

Time-aligned fusion needs to know *when* each token happened, in seconds from the start of the
clip window. Both are fixed by the input geometry, so they are plain constants:

* ``frame_times``: the ``T`` frames are spread evenly over the window and the last one is the
  current frame (``fusionedge.sdk.preprocess.clip_frame_indices``), so frame ``t`` is at
  ``clip_seconds * t / (T - 1)``.
* ``audio_token_times``: audio token ``j`` summarizes the log-mel frames its three stride-2
  convolutions reach, each frame a Hann-windowed ``n_fft`` stretch centred on ``frame * hop``;
  its time is the centre of that span of samples (``audio_token_spans``).
"""

from __future__ import annotations

import torch
from torch import nn

from .audio_frontend import LogMelFrontend
from .gelu import Gelu
from .pitch_motion import PITCH_MOTION_CHANNELS, PitchMotion

__all__ = [
    "PITCH_MOTION_WIDTH",
    "AudioEncoder",
    "ClipEncoder",
    "ConvBNReLU",
    "audio_token_spans",
    "audio_token_times",
    "conv_out_len",
    "frame_times",
]

#: Channels of the pitch-motion branch of ``AudioEncoder`` (``pitch_motion=True``).
PITCH_MOTION_WIDTH = 32


def conv_out_len(n: int, stride: int = 2, kernel: int = 3, padding: int = 1) -> int:
    """Output length of a convolution along one axis."""
    return (n + 2 * padding - kernel) // stride + 1


def frame_times(clip_frames: int, clip_seconds: float) -> tuple[float, ...]:
    """Time of each of the ``T`` clip frames, in seconds from the start of the clip window.

    ``clip_frame_indices`` spreads the ``T`` frame indices evenly from the window's first frame to
    its last one, the current frame at the window's end; so frame ``t`` is at
    ``clip_seconds * t / (T - 1)`` and a single frame is at ``clip_seconds``. The true times differ
    from these by at most 1.5 frame periods (the last frame is the one at or just before the end,
    and indices are rounded), which the model cannot know: the geometry fixes no frame rate.

    Args:
        clip_frames: T, >= 1.
        clip_seconds: length of the window, > 0.

    Raises:
        ValueError: ``clip_frames`` < 1 or ``clip_seconds`` <= 0.

    Returns:
        ``T`` non-decreasing times; the last one is ``clip_seconds``.
    """
    if int(clip_frames) != clip_frames or clip_frames < 1:
        raise ValueError(f"clip_frames must be a positive integer, got {clip_frames!r}")
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds!r}")
    t = int(clip_frames)
    if t == 1:
        return (float(clip_seconds),)
    return tuple(float(clip_seconds) * i / (t - 1) for i in range(t))


def _audio_time_layers(depth: int) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) along time of ``AudioEncoder.cnn``: three stride-2 3×3 convolutions,
    then ``depth`` stride-1 ones (the 1×1 projection after them does not mix time)."""
    return [(3, 2, 1)] * 3 + [(3, 1, 1)] * depth


def _audio_token_sample_spans(num_samples: int, n_fft: int, hop_length: int, depth: int) -> list[tuple[int, int]]:
    """``(first, last)`` sample index read by each audio token (see ``audio_token_spans``)."""
    if min(num_samples, hop_length) < 1 or n_fft < 2 or depth < 0:
        raise ValueError(f"need num_samples, hop_length >= 1, n_fft >= 2, depth >= 0; got "
                         f"{num_samples}, {hop_length}, {n_fft}, {depth}")
    layers = _audio_time_layers(depth)
    n = 1 + num_samples // hop_length  # log-mel frames (centre padding)
    for k, s, p in layers:
        n = conv_out_len(n, stride=s, kernel=k, padding=p)
    spans = []
    for j in range(n):
        lo = hi = j
        for k, s, p in reversed(layers):  # token → log-mel frames
            lo, hi = lo * s - p, hi * s - p + k - 1
        # frames → samples with a non-zero window weight
        spans.append((lo * hop_length - n_fft // 2 + 1, hi * hop_length - n_fft // 2 + n_fft - 1))
    return spans


def audio_token_spans(num_samples: int, sample_rate: int, n_fft: int, hop_length: int,
                      depth: int = 0) -> tuple[tuple[float, float], ...]:
    """The stretch of the waveform each audio token summarizes (its receptive field), in seconds.

    Log-mel frame ``n`` weights samples ``n * hop - n_fft // 2 + m``, ``m = 0 .. n_fft - 1``, by a
    periodic Hann window, which is 0 at ``m = 0``; so it reads samples
    ``[n * hop - n_fft // 2 + 1, n * hop - n_fft // 2 + n_fft - 1]``. A convolution along time
    (kernel ``k``, stride ``s``, padding ``p``) makes output ``j`` read inputs
    ``[j * s - p, j * s - p + k - 1]``; composing the encoder's layers backwards from token ``j`` to
    frames, then frames to samples, gives the span. Spans of the first and last tokens reach past the
    window into the zero padding; they are not cut, so every token's centre is the same fixed stride
    (``8 * hop`` samples) from the next.

    Args:
        num_samples: samples per clip, S >= 1.
        sample_rate: Hz, >= 1.
        n_fft: STFT window, samples (>= 2).
        hop_length: STFT hop, samples (>= 1).
        depth: stride-1 3×3 convolutions after the third stride-2 one (``audio_depth``); they widen
            the span but do not move its centre.

    Raises:
        ValueError: a size is out of range.

    Returns:
        ``N`` pairs ``(first, last)``: the first and the last sample read, divided by ``sample_rate``.
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
    return tuple((a / sample_rate, b / sample_rate)
                 for a, b in _audio_token_sample_spans(num_samples, n_fft, hop_length, depth))


def audio_token_times(num_samples: int, sample_rate: int, n_fft: int, hop_length: int) -> tuple[float, ...]:
    """Time of each audio token, in seconds from the start of the clip window: the centre of the
    span it summarizes (``audio_token_spans``).

    With the encoder's three stride-2 stages, token ``j`` is centred on log-mel frame ``8 j``, i.e.
    on sample ``8 j * hop`` (plus half a sample for an odd ``n_fft``): every 80 ms at the default
    10 ms hop, from 0 s.

    Args:
        num_samples: samples per clip, S >= 1.
        sample_rate: Hz, >= 1.
        n_fft: STFT window, samples (>= 2).
        hop_length: STFT hop, samples (>= 1).

    Raises:
        ValueError: a size is out of range.

    Returns:
        ``N`` increasing times, ``N = AudioEncoder.num_tokens(num_samples)``.
    """
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
    return tuple((a + b) / (2 * sample_rate) for a, b in _audio_token_sample_spans(num_samples, n_fft, hop_length, 0))


class ConvBNReLU(nn.Sequential):
    """3×3 (by default) convolution → BatchNorm → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _stage(cin: int, cout: int, depth: int) -> nn.Sequential:
    """A stride-2 convolution followed by ``depth`` stride-1 convolutions."""
    return nn.Sequential(ConvBNReLU(cin, cout, stride=2), *[ConvBNReLU(cout, cout) for _ in range(depth)])


def _conv1d_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """A stride-2 1-D convolution over time (kernel 3, padding 1: the time steps of ``ConvBNReLU``'s)."""
    return nn.Sequential(nn.Conv1d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(cout),
                         nn.ReLU(inplace=True))


class ClipEncoder(nn.Module):
    """Video clip ``(B, T, 3, H, W)`` → tokens, a pooled embedding and detection features.

    A per-frame 2-D CNN (weights shared over the T frames) goes down to stride 4 (kept for the
    detection head) and on to stride 16. At stride 16 a temporal convolution mixes each location
    over the T frames (so a light that flashes between frames shows up as a feature), then mean and
    max over time are merged into one map whose cells are the video tokens.

    Args:
        channels: widths at stride 2, 4, 8 and 16.
        depth: extra stride-1 convolutions per stage after the stem.
        clip_frames: T.
        temporal_kernel: frames the temporal convolution spans (odd).
        frame_tokens: also build per-frame tokens for ``forward_with_frames`` (adds the
            ``frame_proj`` weights; off for every model that does not use them).

    ``forward`` returns ``(tokens (B, N, C16), pooled (B, C16), last_s4 (B, C4, H/4, W/4),
    context (B, C16, H/16, W/16))``; boxes refer to the last frame, hence ``last_s4``.
    ``forward_with_frames`` adds ``frame_tokens (B, T, C16)``: per frame, the mean and max over the
    stride-16 cells (after the temporal mixing, whose kernel is centred on the frame), projected.
    """

    def __init__(self, channels: tuple[int, int, int, int], depth: int, clip_frames: int,
                 temporal_kernel: int = 3, frame_tokens: bool = False) -> None:
        super().__init__()
        c2, c4, c8, c16 = channels
        self.clip_frames = clip_frames
        self.stem = ConvBNReLU(3, c2, stride=2)
        self.s4 = _stage(c2, c4, depth)
        self.s8 = _stage(c4, c8, depth)
        self.s16 = _stage(c8, c16, depth)
        k = min(temporal_kernel, 2 * (clip_frames // 2) + 1)
        self.temporal = nn.Sequential(
            nn.Conv3d(c16, c16, (k, 1, 1), padding=(k // 2, 0, 0), bias=False),
            nn.BatchNorm3d(c16),
            nn.ReLU(inplace=True),
        )
        self.merge = nn.Sequential(nn.Conv2d(2 * c16, c16, 1, bias=False), nn.BatchNorm2d(c16),
                                   nn.ReLU(inplace=True))
        # only when asked: existing models keep their state-dict keys
        self.frame_proj = nn.Sequential(nn.Linear(2 * c16, c16), Gelu()) if frame_tokens else None
        self.out_channels = c16
        self.s4_channels = c4

    def _features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (B, C16, T, h, w) after temporal mixing, last_s4 (B, C4, H/4, W/4))``."""
        t = self.clip_frames
        frames = video.flatten(0, 1)  # (B*T, 3, H, W)
        f4 = self.s4(self.stem(frames))  # (B*T, C4, H/4, W/4)
        f16 = self.s16(self.s8(f4))  # (B*T, C16, H/16, W/16)
        c4, h4, w4 = f4.shape[1:]
        c16, h16, w16 = f16.shape[1:]
        last_s4 = f4.reshape(-1, t, c4, h4, w4)[:, -1]  # (B, C4, H/4, W/4)
        x = f16.reshape(-1, t, c16, h16, w16).transpose(1, 2)  # (B, C16, T, h, w)
        return x + self.temporal(x), last_s4  # residual temporal mixing

    def _merge(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C16, T, h, w) → ``(tokens (B, h*w, C16), context (B, C16, h, w))``, time merged."""
        context = self.merge(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))  # (B, C16, h, w)
        return context.flatten(2).transpose(1, 2), context

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, last_s4 = self._features(video)
        tokens, context = self._merge(x)  # (B, h*w, C16), (B, C16, h, w)
        return tokens, tokens.mean(dim=1), last_s4, context

    def forward_with_frames(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """As ``forward``, plus per-frame tokens ``(B, T, C16)`` (frame ``t`` at ``frame_times()[t]``).

        Raises:
            RuntimeError: the encoder was built without ``frame_tokens=True``.
        """
        if self.frame_proj is None:
            raise RuntimeError("ClipEncoder was built without frame_tokens=True; it has no frame tokens")
        x, last_s4 = self._features(video)
        tokens, context = self._merge(x)
        frame_tokens = self.frame_proj(self._per_frame(x))  # (B, T, C16)
        return tokens, tokens.mean(dim=1), last_s4, context, frame_tokens

    @staticmethod
    def _per_frame(x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C16, T, h, w) → per frame, the mean and max over the cells: (B, T, 2*C16)."""
        return torch.cat([x.mean(dim=(3, 4)), x.amax(dim=(3, 4))], dim=1).transpose(1, 2)

    def frame_features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, N, C16), per_frame (B, T, 2*C16))``: the time-merged tokens of ``forward`` and,
        per frame in time order, the mean and max over its stride-16 cells after the temporal mixing
        (unprojected, so every encoder has them, with or without ``frame_tokens``)."""
        x, _ = self._features(video)
        return self._merge(x)[0], self._per_frame(x)


class AudioEncoder(nn.Module):
    """Waveform ``(B, S)`` → per-time-step tokens and a pooled embedding.

    Log-mel front end (inside the graph, see ``audio_frontend``) → per-mel-bin BatchNorm → a small
    2-D CNN over (mel × time), three stride-2 stages → frequency and channels folded into each time
    step → 1×1 projection.

    With ``pitch_motion`` the STFT power also feeds ``PitchMotion`` (per frame: the pitch, its
    derivatives and salience, see ``pitch_motion``) → per-channel BatchNorm → three stride-2 1-D
    convolutions over time (``PITCH_MOTION_WIDTH`` channels, the same time steps as the 2-D CNN);
    each time step's pitch-motion features and their mean over the window join the folded map
    before the projection, so every token knows how the pitch moves in its stretch and in the clip.

    Args:
        channels: widths of the three stages.
        depth: extra stride-1 convolutions in the last stage.
        out_dim: token width.
        sample_rate, n_fft, hop_length, n_mels, f_min, f_max: front-end settings (Hz, samples).
        pitch_motion: add the pitch-motion branch (new weights; off keeps the state-dict keys).

    ``forward`` returns ``(tokens (B, N, out_dim), pooled (B, out_dim))``.
    """

    def __init__(self, channels: tuple[int, int, int], depth: int, out_dim: int, sample_rate: int,
                 n_fft: int, hop_length: int, n_mels: int, f_min: float, f_max: float,
                 pitch_motion: bool = False) -> None:
        super().__init__()
        a1, a2, a3 = channels
        self.frontend = LogMelFrontend(sample_rate, n_fft, hop_length, n_mels, f_min, f_max)
        self.norm = nn.BatchNorm1d(n_mels)
        self.cnn = nn.Sequential(
            ConvBNReLU(1, a1, stride=2),
            ConvBNReLU(a1, a2, stride=2),
            _stage(a2, a3, depth),
        )
        mel_out = conv_out_len(conv_out_len(conv_out_len(n_mels)))
        proj_in = a3 * mel_out
        # only when asked: existing models keep their state-dict keys
        self.pitch = self.pitch_norm = self.pitch_cnn = None
        if pitch_motion:
            w = PITCH_MOTION_WIDTH
            self.pitch = PitchMotion(sample_rate, n_fft)
            self.pitch_norm = nn.BatchNorm1d(PITCH_MOTION_CHANNELS)
            self.pitch_cnn = nn.Sequential(_conv1d_bn_relu(PITCH_MOTION_CHANNELS, w), _conv1d_bn_relu(w, w),
                                           _conv1d_bn_relu(w, w))
            proj_in += 2 * w
        self.proj = nn.Sequential(nn.Conv1d(proj_in, out_dim, 1, bias=False), nn.BatchNorm1d(out_dim),
                                  nn.ReLU(inplace=True))
        self.out_channels = out_dim

    def num_tokens(self, num_samples: int) -> int:
        """Tokens produced for a waveform of ``num_samples`` samples."""
        return conv_out_len(conv_out_len(conv_out_len(self.frontend.num_frames(num_samples))))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pitch is None:  # the front end as one module (QAT may replace it with a fake-quantized one)
            x = self.cnn(self.norm(self.frontend(audio)).unsqueeze(1)).flatten(1, 2)  # (B, C*M/8, F/8)
        else:  # one STFT feeds both the log-mel map and the pitch motion
            power = self.frontend.power(audio)  # (B, n_fft/2+1, F)
            x = self.cnn(self.norm(self.frontend.log_mel(power)).unsqueeze(1)).flatten(1, 2)  # (B, C*M/8, F/8)
            m = self.pitch_cnn(self.pitch_norm(self.pitch(power)))  # (B, P, F/8)
            x = torch.cat([x, m, m.mean(dim=2, keepdim=True).expand_as(m)], dim=1)
        x = self.proj(x)  # (B, D, F/8): each time step sees every mel band
        tokens = x.transpose(1, 2)  # (B, N, D)
        return tokens, tokens.mean(dim=1)
