"""Algorithms; importing this package registers them all."""

from plural.algorithms.fedavg import FedAvg, FedAvgConfig
from plural.algorithms.local import Local, LocalConfig

__all__ = ["FedAvg", "FedAvgConfig", "Local", "LocalConfig"]
