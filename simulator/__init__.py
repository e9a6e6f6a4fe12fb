"""Simulated customer journeys with ground truth and the Bayes-optimal prediction.

See ``docs/simulator.md``. The command line entry is ``lifecycle simulate``.
"""

from customer_lifecycle.simulator.config import Scenario, load_scenario
from customer_lifecycle.simulator.dataset import dataset_oracle
from customer_lifecycle.simulator.generate import SimulatedData, simulate, write_dataset
from customer_lifecycle.simulator.oracle import posterior

__all__ = [
    "Scenario",
    "SimulatedData",
    "dataset_oracle",
    "load_scenario",
    "posterior",
    "simulate",
    "write_dataset",
]
