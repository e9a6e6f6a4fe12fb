"""Simulated customer journeys with ground truth and the Bayes-optimal prediction.

See ``docs/simulator.md``. The command line entry is ``lifecycle simulate``.
"""

from simulator.config import Scenario, load_scenario
from simulator.generate import SimulatedData, simulate, write_dataset
from simulator.oracle import posterior

__all__ = [
    "Scenario",
    "SimulatedData",
    "load_scenario",
    "posterior",
    "simulate",
    "write_dataset",
]
