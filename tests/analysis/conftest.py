"""Fixtures of the analysis tests: the embedded digits CNN and its images."""

from __future__ import annotations

import pytest
import torch

import ssa
from ssa.session import Session


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The digits CNN is tiny: one torch thread avoids oversubscription next to other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    images, labels = ssa.load_images("digits")
    return images, labels


@pytest.fixture(scope="module")
def net(digits):
    images, _ = digits
    network = ssa.load_model("digits")
    network.prepare(images)
    return network


@pytest.fixture(scope="module")
def class3(digits):
    images, labels = digits
    return images[labels == 3][:60]


@pytest.fixture(scope="module")
def session3(class3):
    """The 60 images of class 3 and the digits CNN (default rule)."""
    return Session("digits", class3).prepare()
