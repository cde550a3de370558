"""CL methods: one Lightning Callback per method, combinable in ``Trainer(callbacks=[...])``.

Naive fine-tuning is no callback at all. Joint training is a stream, not a callback:
:class:`lightning_cl.benchmarks.JointTraining`.
"""

from lightning_cl.callbacks.cumulative import Cumulative
from lightning_cl.callbacks.from_scratch import FromScratch

__all__ = ["Cumulative", "FromScratch"]
