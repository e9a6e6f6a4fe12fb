"""Fixtures shared by the simulator tests."""

from __future__ import annotations

import pytest
from customer_lifecycle.simulator.config import Scenario, scenario_from_dict

from tests.simulator.tiny import tiny_parameters


@pytest.fixture
def tiny() -> Scenario:
    return scenario_from_dict(tiny_parameters(), source="tiny")
