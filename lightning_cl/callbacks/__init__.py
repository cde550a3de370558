"""CL methods: one Lightning Callback per method, combinable in ``Trainer(callbacks=[...])``.

Naive fine-tuning is no callback at all. Joint training is a stream, not a callback:
:class:`lightning_cl.benchmarks.JointTraining`.
"""

from lightning_cl.callbacks.agem import AGEM
from lightning_cl.callbacks.cope import CoPE
from lightning_cl.callbacks.cumulative import Cumulative
from lightning_cl.callbacks.der import DER
from lightning_cl.callbacks.er_ace import ERACE
from lightning_cl.callbacks.ewc import EWC
from lightning_cl.callbacks.from_scratch import FromScratch
from lightning_cl.callbacks.gdumb import GDumb
from lightning_cl.callbacks.gem import GEM
from lightning_cl.callbacks.generative_replay import GenerativeReplay
from lightning_cl.callbacks.gss import GSS
from lightning_cl.callbacks.icarl import ICaRL
from lightning_cl.callbacks.lfl import LFL
from lightning_cl.callbacks.lwf import LwF
from lightning_cl.callbacks.mas import MAS
from lightning_cl.callbacks.mir import MIR
from lightning_cl.callbacks.rank_consistency import RankConsistency
from lightning_cl.callbacks.replay import Replay
from lightning_cl.callbacks.rwalk import RWalk
from lightning_cl.callbacks.si import SI

__all__ = [
    "AGEM",
    "DER",
    "ERACE",
    "EWC",
    "GEM",
    "GSS",
    "LFL",
    "MAS",
    "MIR",
    "SI",
    "CoPE",
    "Cumulative",
    "FromScratch",
    "GDumb",
    "GenerativeReplay",
    "ICaRL",
    "LwF",
    "RWalk",
    "RankConsistency",
    "Replay",
]
