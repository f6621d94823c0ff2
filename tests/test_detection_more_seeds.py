"""The planted-fault test of tests/test_detection.py on seeds 11 to 20, on both databases.

A file of its own so that pytest's workers, which take a file each, run the two halves of
the twenty seeds at once.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from tests.test_detection import ALL_SEEDS, check_seed


@pytest.mark.slow
@pytest.mark.parametrize("seed", ALL_SEEDS[10:])
def test_every_planted_fault_is_found_and_no_healthy_version(engine: Engine, seed: int
                                                             ) -> None:
    check_seed(engine, seed)
