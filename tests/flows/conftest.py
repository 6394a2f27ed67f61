"""Every flow test runs under the session's one Prefect test harness."""

import pytest


@pytest.fixture(autouse=True)
def _harness(prefect_harness: None) -> None:
    """Use the shared harness."""
