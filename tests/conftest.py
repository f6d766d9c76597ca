"""Shared test settings: tiny models run faster on one thread, and repeatable."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)
