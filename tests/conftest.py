"""Shared pytest configuration: keep CPU thread counts small and deterministic on 2-core machines."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
