"""Fixtures for the frontend tests (helpers live in frontend_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
