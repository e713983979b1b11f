from __future__ import annotations

import numpy as np
import pytest

from streamproc.drift import ReferenceProfile


@pytest.fixture(scope="session")
def normal_profile() -> ReferenceProfile:
    rng = np.random.default_rng(12345)
    return ReferenceProfile.from_matrix(rng.normal(size=(20_000, 3)), ["a", "b", "c"])
