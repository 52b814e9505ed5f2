"""What the training tests share: a student small enough that an epoch on a few clips takes about a second."""

TINY = dict(video_channels=(8, 8, 16, 16), video_depth=0, audio_channels=(8, 8, 16), audio_depth=0, audio_dim=16,
            fusion_dim=16, fusion_heads=2, head_hidden=16, det_channels=8)
