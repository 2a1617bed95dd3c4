"""Algorithms; importing this package registers them all."""

from plural.algorithms.apfl import APFL, APFLConfig
from plural.algorithms.cfl import CFL, CFLConfig
from plural.algorithms.ditto import Ditto, DittoConfig
from plural.algorithms.fedala import FedALA, FedALAConfig
from plural.algorithms.fedas import FedAS, FedASConfig
from plural.algorithms.fedavg import AveragingConfig, FedAvg, FedAvgConfig
from plural.algorithms.fedbabu import FedBABU, FedBABUConfig
from plural.algorithms.fedbn import FedBN, FedBNConfig
from plural.algorithms.fedcp import FedCP, FedCPConfig
from plural.algorithms.feddbe import FedDBE, FedDBEConfig
from plural.algorithms.fedem import FedEM, FedEMConfig
from plural.algorithms.fedfomo import FedFomo, FedFomoConfig
from plural.algorithms.fedpac import FedPAC, FedPACConfig
from plural.algorithms.fedproto import FedProto, FedProtoConfig
from plural.algorithms.fedprox import FedProx, FedProxConfig
from plural.algorithms.fedrep import FedRep, FedRepConfig
from plural.algorithms.fedrod import FedRoD, FedRoDConfig
from plural.algorithms.finetune import Finetune, FinetuneConfig
from plural.algorithms.fml import FML, FMLConfig
from plural.algorithms.gpfl import GPFL, GPFLConfig
from plural.algorithms.ifca import IFCA, IFCAConfig
from plural.algorithms.lg_fedavg import LGFedAvg, LGFedAvgConfig
from plural.algorithms.local import Local, LocalConfig
from plural.algorithms.mocha import MOCHA, MOCHAConfig
from plural.algorithms.oracle import Oracle, OracleConfig
from plural.algorithms.partial import FedPer, FedPerConfig, PartialFedAvg, SharedBody
from plural.algorithms.per_fedavg import PerFedAvg, PerFedAvgConfig
from plural.algorithms.pfedgraph import PFedGraph, PFedGraphConfig
from plural.algorithms.pfedhn import PFedHN, PFedHNConfig
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
    "FedBABU",
    "FedBABUConfig",
    "FedBN",
    "FedBNConfig",
    "FedCP",
    "FedCPConfig",
    "FedDBE",
    "FedDBEConfig",
    "FedEM",
    "FedEMConfig",
    "FedFomo",
    "FedFomoConfig",
    "FedPAC",
    "FedPACConfig",
    "FedPer",
    "FedPerConfig",
    "FedProto",
    "FedProtoConfig",
    "FedProx",
    "FedProxConfig",
    "FedRep",
    "FedRepConfig",
    "FedRoD",
    "FedRoDConfig",
    "Finetune",
    "FinetuneConfig",
    "GPFLConfig",
    "IFCAConfig",
    "LGFedAvg",
    "LGFedAvgConfig",
    "Local",
    "LocalConfig",
    "MOCHAConfig",
    "Oracle",
    "OracleConfig",
    "PFedGraph",
    "PFedGraphConfig",
    "PFedHN",
    "PFedHNConfig",
    "PFedLIA",
    "PFedLIAConfig",
    "PFedLoRA",
    "PFedLoRAConfig",
    "PFedMe",
    "PFedMeConfig",
    "PartialFedAvg",
    "PerFedAvg",
    "PerFedAvgConfig",
    "QFedAvg",
    "QFedAvgConfig",
    "Scaffold",
    "ScaffoldConfig",
    "SharedBody",
]
