"""CL methods: one Lightning Callback per method, combinable in ``Trainer(callbacks=[...])``.

Naive fine-tuning is no callback at all. Joint training is a stream, not a callback:
:class:`lightning_cl.benchmarks.JointTraining`.
"""

from lightning_cl.callbacks.cumulative import Cumulative
from lightning_cl.callbacks.ewc import EWC
from lightning_cl.callbacks.from_scratch import FromScratch
from lightning_cl.callbacks.lfl import LFL
from lightning_cl.callbacks.lwf import LwF
from lightning_cl.callbacks.mas import MAS
from lightning_cl.callbacks.rwalk import RWalk
from lightning_cl.callbacks.si import SI

__all__ = ["EWC", "LFL", "MAS", "SI", "Cumulative", "FromScratch", "LwF", "RWalk"]
