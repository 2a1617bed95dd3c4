"""Algorithms; importing this package registers them all."""

from plural.algorithms.apfl import APFL, APFLConfig
from plural.algorithms.cfl import CFL, CFLConfig
from plural.algorithms.clustered import IFCA, IFCAConfig, Oracle, OracleConfig
from plural.algorithms.ditto import Ditto, DittoConfig
from plural.algorithms.fedala import FedALA, FedALAConfig
from plural.algorithms.fedas import FedAS, FedASConfig
from plural.algorithms.fedavg import AveragingConfig, FedAvg, FedAvgConfig
from plural.algorithms.fedcp import FedCP, FedCPConfig
from plural.algorithms.feddbe import FedDBE, FedDBEConfig
from plural.algorithms.fedem import FedEM, FedEMConfig
from plural.algorithms.fedproto import FedProto, FedProtoConfig
from plural.algorithms.fedprox import FedProx, FedProxConfig
from plural.algorithms.finetune import Finetune, FinetuneConfig
from plural.algorithms.fml import FML, FMLConfig
from plural.algorithms.gpfl import GPFL, GPFLConfig
from plural.algorithms.local import Local, LocalConfig
from plural.algorithms.mocha import MOCHA, MOCHAConfig
from plural.algorithms.partial import (
    FedBN,
    FedBNConfig,
    FedPer,
    FedPerConfig,
    FedRep,
    FedRepConfig,
    PartialFedAvg,
    SharedBody,
)
from plural.algorithms.pfedgraph import PFedGraph, PFedGraphConfig
from plural.algorithms.pfedlia import PFedLIA, PFedLIAConfig
from plural.algorithms.pfedlora import PFedLoRA, PFedLoRAConfig
from plural.algorithms.pfedme import PFedMe, PFedMeConfig
from plural.algorithms.qfedavg import QFedAvg, QFedAvgConfig
from plural.algorithms.scaffold import Scaffold, ScaffoldConfig

__all__ = [
    "APFL",
    "CFL",
    "FML",
    "GPFL",
    "IFCA",
    "MOCHA",
    "APFLConfig",
    "AveragingConfig",
    "CFLConfig",
    "Ditto",
    "DittoConfig",
    "FMLConfig",
    "FedALA",
    "FedALAConfig",
    "FedAS",
    "FedASConfig",
    "FedAvg",
    "FedAvgConfig",
    "FedBN",
    "FedBNConfig",
    "FedCP",
    "FedCPConfig",
    "FedDBE",
    "FedDBEConfig",
    "FedEM",
    "FedEMConfig",
    "FedPer",
    "FedPerConfig",
    "FedProto",
    "FedProtoConfig",
    "FedProx",
    "FedProxConfig",
    "FedRep",
    "FedRepConfig",
    "Finetune",
    "FinetuneConfig",
    "GPFLConfig",
    "IFCAConfig",
    "Local",
    "LocalConfig",
    "MOCHAConfig",
    "Oracle",
    "OracleConfig",
    "PFedGraph",
    "PFedGraphConfig",
    "PFedLIA",
    "PFedLIAConfig",
    "PFedLoRA",
    "PFedLoRAConfig",
    "PFedMe",
    "PFedMeConfig",
    "PartialFedAvg",
    "QFedAvg",
    "QFedAvgConfig",
    "Scaffold",
    "ScaffoldConfig",
    "SharedBody",
]
