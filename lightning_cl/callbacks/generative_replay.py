"""Deep Generative Replay: rehearse samples of a generator trained on the stream, labelled by the old model."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from lightning_cl.callbacks._common import check_number, cpu_copy, place_teacher, snapshot
from lightning_cl.callbacks._replay import cat_batches
from lightning_cl.core.callback import ContinualCallback, TrainingStep
from lightning_cl.core.data import _mix_seed, collate_fn_of, in_group
from lightning_cl.core.dynamic import forward_logits, probing
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule
from lightning_cl.models.vae import MlpVAE

# salts of the seeds: the generator's initialisation, its training and the replay of the solver's
# steps draw apart
_TRAIN_SALT, _NOISE_SALT, _INIT_SALT = 0x6E0, 0x6E1, 0x6E2


def _optional_positive_int(value: Any, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{name}`: expected None or a positive integer, got {value!r}.")
    return value


def _accepts(method: Any, keyword: str) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return True
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class GenerativeReplay(ContinualCallback):
    """Deep Generative Replay: a generator of past inputs, labelled by the previous model.

    Shin, Lee, Kim & Kim, "Continual Learning with Deep Generative Replay", NeurIPS 2017. The
    user's model is the *solver*; a *generator* (a VAE here, as Avalanche's
    ``GenerativeReplay``; a GAN in the paper) learns the inputs of the stream so far:

    * **When an experience ends**, the callback trains the generator on the experience's
      training data, each batch of ``generator_batch_size`` real inputs joined by replayed
      inputs sampled from the previous generator (Avalanche's ``TrainGeneratorAfterExpPlugin``
      with the generator's own ``GenerativeReplayPlugin``), for ``generator_epochs`` epochs with
      its own Adam optimizer (``generator_lr``, ``generator_weight_decay``; a fresh optimizer per
      experience), on the model's device, with its own loop (Lightning does not see it). The
      loss is the generator's ``loss(x)`` on the joined batch.
    * **When an experience** ``k >= 1`` **starts**, frozen copies of the generator and of the
      user's module (the old solver) are taken. Every training batch then gets ``replay_size``
      generated inputs labelled by the old solver's argmax over all its outputs, appended to
      the batch before the user's ``training_step`` (which sees an ordinary ``(x, y[, t])``
      batch; the replayed task labels are the batch's first one, as Avalanche). With
      ``is_weighted_replay`` the batch is left alone and the cross-entropy of the model on the
      replayed samples is added as the loss term ``"generative_replay"``
      (``train/generative_replay_loss``), weighted by ``replay_loss_weight``, which is multiplied
      by ``replay_loss_weight_factor`` after every step (Avalanche's defaults: 1e-4 and 1). The
      generator's training mixes its replay the same way (summed, or added with its own weight).

    ``replay_size`` defaults to the size of the batch being joined (the current training
    batch, or the generator's real batch), multiplied by the experience index with
    ``increasing_replay_size`` (Avalanche's options, same names).

    The generator is any ``nn.Module`` with ``sample(n, generator=...)`` returning ``n`` inputs
    (reshaped to the stream's sample shape, e.g. ``[1, 28, 28]``: the generator may return them
    flat) and ``loss(x)`` returning a scalar to minimise. By default it is an
    :class:`~lightning_cl.models.vae.MlpVAE` of the stream's sample shape with Avalanche's layer
    sizes and latent dimension 16, whose output range is the range of the first experience's
    inputs (so it generates normalised images for normalised data); pass your own ``MlpVAE``
    (or any generator) to change that. Avalanche's own ``GenerativeReplay`` default is an
    ``MlpVAE`` with ``nhid=2``, Adam lr 0.01 and weight decay 1e-4, with MSE reconstruction.

    Randomness is explicit and resumable: each replay is drawn from a ``torch.Generator``
    (on the CPU) seeded by ``(seed, experience, Lightning's total batch index)``, so a resumed
    run draws the same samples as an uninterrupted one, and every DDP rank draws the same
    replay (the ranks' current batches differ). The generator's training shuffles and samples
    from a generator seeded by ``(seed, experience)`` and runs under a forked global RNG seeded
    the same way (the VAE's noise, dropout), leaving the global RNG as it was. Every rank trains
    the generator on the whole experience; under DDP rank 0's weights are then broadcast, so the
    ranks keep identical generators. Batches of a single input are skipped in the generator's
    training (BatchNorm cannot train on them).

    State: the generator's weights, the old generator's and the old solver's (CPU tensors),
    the sample shape and the default generator's construction arguments, so a checkpoint
    restores the run mid-stream and loads with ``torch.load(..., weights_only=True)``. The old
    models are rebuilt from a copy of the generator / the user's module at their first use.
    Between experiences the generator sits on the CPU, as the model does between fits.

    Cost: per solver step, one generator and one old-solver forward pass on ``replay_size``
    samples, and a larger training batch; per experience, the generator's epochs. On
    continual-learning-baselines' class-incremental SplitMNIST setting (MLP 400x2, Adam 1e-3,
    batch 16 + ``replay_size=100``, 10 epochs; ``bench/generative_replay.py``) the default
    generator reaches 0.77 average accuracy (target 0.75) in 6 minutes on two CPU cores.

    Args:
        generator: the generator (see above), or None for the default ``MlpVAE``.
        replay_size: generated samples per batch (None: the batch's size).
        increasing_replay_size: with the default ``replay_size``, multiply it by the index of
            the experience (more replay as more experiences are behind).
        is_weighted_replay: a weighted replay loss term instead of joining the batch.
        replay_loss_weight: initial weight of the replay term with ``is_weighted_replay``.
        replay_loss_weight_factor: the weight is multiplied by this after every step.
        generator_epochs: epochs of generator training per experience (None: the Trainer's
            ``max_epochs``, the epochs of one experience; 1 for a Trainer bounded by steps only).
        generator_batch_size: real inputs per generator batch (None: the datamodule's
            ``batch_size``).
        generator_lr: learning rate of the generator's Adam optimizer.
        generator_weight_decay: weight decay of that optimizer.
        seed: seed of the replay and of the generator's training.

    Raises:
        TypeError: for a generator that is not an ``nn.Module`` with ``sample(n, generator=...)``
            and ``loss(x)`` methods, or non-numeric weights and rates.
        ValueError: for a non-positive ``replay_size``, ``generator_epochs``,
            ``generator_batch_size`` or ``generator_lr``, negative weights, or
            ``increasing_replay_size`` with a fixed ``replay_size``; when the first experience
            starts, for generated samples that cannot be shaped as the stream's samples.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from lightning_cl import ContinualModule
        >>> from lightning_cl.benchmarks import SplitDigits
        >>> from lightning_cl.models import MLP, Classifier
        >>> _ = torch.manual_seed(0)
        >>> dm = SplitDigits(num_experiences=5, class_order=list(range(10)), batch_size=32)
        >>> replay = GenerativeReplay(generator_epochs=1)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[replay], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False)
        >>> model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(32,)), lr=0.1))
        >>> for _ in range(2):
        ...     trainer.fit(model, datamodule=dm)  # the second fit joins 32 replayed digits to each batch
        >>> type(replay.generator).__name__, replay.generator.shape
        ('MlpVAE', (1, 8, 8))
    """

    def __init__(
        self,
        generator: nn.Module | None = None,
        replay_size: int | None = None,
        increasing_replay_size: bool = False,
        is_weighted_replay: bool = False,
        replay_loss_weight: float = 1e-4,
        replay_loss_weight_factor: float = 1.0,
        generator_epochs: int | None = None,
        generator_batch_size: int | None = None,
        generator_lr: float = 1e-3,
        generator_weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        if generator is not None:
            if not isinstance(generator, nn.Module):
                raise TypeError(
                    f"`generator`: expected None or a torch.nn.Module with sample(n, generator=...) and loss(x), "
                    f"got {type(generator).__name__}."
                )
            for method in ("sample", "loss"):
                if not callable(getattr(generator, method, None)):
                    raise TypeError(
                        f"`generator`: {type(generator).__name__} has no `{method}` method; a generator needs "
                        "sample(n, generator=...) -> n inputs and loss(x) -> a scalar (e.g. lightning_cl's MlpVAE)."
                    )
            if not _accepts(generator.sample, "generator"):
                raise TypeError(
                    f"`generator`: {type(generator).__name__}.sample takes no `generator` argument; it must accept "
                    "sample(n, generator=torch.Generator) so that the replay is seeded."
                )
        self.replay_size: int | None = _optional_positive_int(replay_size, "replay_size")
        for name, flag in (
            ("increasing_replay_size", increasing_replay_size),
            ("is_weighted_replay", is_weighted_replay),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"`{name}`: expected a bool, got {type(flag).__name__} {flag!r}.")
        if increasing_replay_size and replay_size is not None:
            raise ValueError(
                f"`increasing_replay_size`: scales the default replay size (the batch's), but `replay_size` is fixed "
                f"at {replay_size}; pass one or the other."
            )
        self.increasing_replay_size: bool = increasing_replay_size
        self.is_weighted_replay: bool = is_weighted_replay
        self.replay_loss_weight: float = check_number(replay_loss_weight, "replay_loss_weight")
        self.replay_loss_weight_factor: float = check_number(replay_loss_weight_factor, "replay_loss_weight_factor")
        self.generator_epochs: int | None = _optional_positive_int(generator_epochs, "generator_epochs")
        self.generator_batch_size: int | None = _optional_positive_int(generator_batch_size, "generator_batch_size")
        if isinstance(generator_lr, bool) or not isinstance(generator_lr, numbers.Real):
            raise TypeError(f"`generator_lr`: expected a positive number, got {type(generator_lr).__name__}.")
        if not (math.isfinite(generator_lr) and generator_lr > 0):
            raise ValueError(f"`generator_lr`: expected a positive finite number, got {generator_lr!r}.")
        self.generator_lr: float = float(generator_lr)
        self.generator_weight_decay: float = check_number(generator_weight_decay, "generator_weight_decay")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed`: expected an integer, got {type(seed).__name__} {seed!r}.")
        self.seed: int = seed

        self.generator: nn.Module | None = generator
        # construction arguments of the default generator (None for the user's): a checkpoint rebuilds it
        self._default_spec: dict[str, Any] | None = None
        self._shape: tuple[int, ...] | None = None  # one sample of the stream
        self._experience: int = -1
        self._trained: bool = False  # the generator has learned at least one experience: replay is on
        self._old_generator: nn.Module | None = None
        self._old_generator_pending: dict[str, Tensor] | None = None
        self._teacher: nn.Module | None = None
        self._teacher_pending: dict[str, Tensor] | None = None
        self._weight: float = self.replay_loss_weight  # the solver's replay weight (weighted replay)
        self._generator_weight: float = self.replay_loss_weight  # the generator's
        self._checked: bool = False
        self.generator_losses: list[float] = []
        """Mean generator loss per sample of each epoch of the last generator training (not checkpointed)."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(replay_size=self.replay_size, is_weighted_replay=self.is_weighted_replay)

    # ----------------------------------------------------------------------------- experience
    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        self._experience = experience.index
        data = in_group(experience.dataset, "train")
        shape = tuple(torch.as_tensor(data[0][0]).shape)  # type: ignore[index]
        if self._shape is not None and shape != self._shape:
            raise ValueError(
                f"GenerativeReplay: experience {experience.index} has samples of shape {list(shape)}, earlier "
                f"experiences {list(self._shape)}; one generator cannot replay both."
            )
        self._shape = shape
        if self.generator is None:
            low, high = _value_range(data)
            self._default_spec = {"shape": list(shape), "input_range": [low, high]}
            self.generator = _default_generator(self._default_spec, self.seed)
        if not self._checked:
            # a generator whose samples do not fit the stream fails now, not an experience later
            _check_samples(self, self.generator, torch.as_tensor(data[0][0]))  # type: ignore[index]
            self._checked = True
        if not self._trained:
            self._old_generator = self._teacher = None
            self._old_generator_pending = self._teacher_pending = None
            return
        self._old_generator, self._old_generator_pending = snapshot(self.generator), None
        self._teacher, self._teacher_pending = snapshot(pl_module.module), None

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        generator = self._generator()
        device = pl_module.device
        epochs = self.generator_epochs or _epochs_per_experience(pl_module)
        batch_size = self.generator_batch_size or pl_module.datamodule.batch_size
        old = self._old_generator_on(device) if self._trained else None
        data = in_group(experience.dataset, "train")
        size = len(data)  # type: ignore[arg-type]
        rng = torch.Generator().manual_seed(_mix_seed(self.seed, experience.index, _TRAIN_SALT))
        devices = [device.index or 0] if device.type == "cuda" else []
        generator.to(device)
        optimizer = torch.optim.Adam(
            [p for p in generator.parameters() if p.requires_grad],
            lr=self.generator_lr,
            weight_decay=self.generator_weight_decay,
        )
        self.generator_losses = []
        generator.train()
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(_mix_seed(self.seed, experience.index, _NOISE_SALT))
            for _ in range(epochs):
                total, count = 0.0, 0
                order = torch.randperm(size, generator=rng)
                for start in range(0, size, batch_size):
                    x = _read(data, order[start : start + batch_size])[0].to(device=device, dtype=torch.float32)
                    replay = None
                    if old is not None:
                        n = self._replay_count(len(x), experience.index)
                        with torch.no_grad():
                            replay = self._sample(old, n, rng, x)
                    if len(x) + (0 if replay is None else len(replay)) < 2:
                        continue
                    if replay is None:
                        loss = generator.loss(x)  # type: ignore[operator]
                    elif self.is_weighted_replay:
                        loss = generator.loss(x) + self._generator_weight * generator.loss(replay)  # type: ignore[operator]
                        self._generator_weight *= self.replay_loss_weight_factor
                    else:
                        loss = generator.loss(torch.cat([x, replay]))  # type: ignore[operator]
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                    count += len(x) + (0 if replay is None else len(replay))
                self.generator_losses.append(total / max(count, 1))
        generator.eval()
        if trainer.world_size > 1:
            # the same seeds and data on every rank, but kernels may differ in the last bits: rank 0's weights win
            weights = trainer.strategy.broadcast(cpu_copy(generator.state_dict()), src=0)
            generator.load_state_dict(weights)
        # between fits the model sits on the CPU: so does the generator (the replay uses a placed copy)
        generator.to("cpu")
        self._trained = True
        for logger in trainer.loggers:
            logger.log_metrics({"train/generator_loss": self.generator_losses[-1]}, step=trainer.global_step)

    # ----------------------------------------------------------------------------------- replay
    def prepare_batch(self, pl_module: ContinualModule, batch: Any, extra: Mapping[str, Any]) -> Any:
        if self.is_weighted_replay or not self._trained:
            return batch
        return cat_batches(batch, self._replay_batch(pl_module, batch))

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        if not self.is_weighted_replay or not self._trained:
            return {}
        replay = self._replay_batch(step.module, step.batch)
        logits = forward_logits(step.module.module, replay)
        weight = self._weight
        self._weight *= self.replay_loss_weight_factor
        return {"generative_replay": weight * F.cross_entropy(logits.float(), replay[1])}

    def _replay_batch(self, pl_module: ContinualModule, batch: Sequence[Tensor]) -> list[Tensor]:
        """Generated inputs for ``batch``, labelled by the old solver, in its fields ``(x, y[, t])``."""
        x = batch[0]
        n = self._replay_count(len(x), self._experience)
        trainer = pl_module.trainer
        rng = torch.Generator().manual_seed(
            _mix_seed(self.seed, self._experience, trainer.fit_loop.epoch_loop.total_batch_idx)
        )
        teacher = place_teacher(
            self._teacher, self._teacher_pending, pl_module.module, "GenerativeReplay", "old solver"
        )
        self._teacher, self._teacher_pending = teacher, None
        with torch.no_grad():
            generated = self._sample(self._old_generator_on(x.device), n, rng, x)
            replay = [generated, torch.zeros(n, dtype=batch[1].dtype, device=x.device)]
            if len(batch) > 2:
                replay.append(batch[2][:1].expand(n).clone())  # the batch's first task label, without a sync
            replay[1] = forward_logits(teacher, replay).argmax(dim=-1).to(batch[1].dtype)
        return replay

    def _replay_count(self, batch_size: int, experience: int) -> int:
        if self.replay_size is not None:
            return self.replay_size
        return batch_size * experience if self.increasing_replay_size else batch_size

    def _sample(self, generator: nn.Module, n: int, rng: torch.Generator, like: Tensor) -> Tensor:
        """``n`` samples of ``generator`` shaped as the stream's samples, with ``like``'s device and dtype."""
        assert self._shape is not None  # for mypy: set when the first experience starts
        samples = generator.sample(n, generator=rng)  # type: ignore[operator]
        if not isinstance(samples, Tensor) or samples.numel() != n * math.prod(self._shape):
            got = f"shape {list(samples.shape)}" if isinstance(samples, Tensor) else type(samples).__name__
            raise ValueError(
                f"`generator`: {type(generator).__name__}.sample({n}) returned {got}, which cannot be shaped as "
                f"{n} samples of the stream's shape {list(self._shape)}."
            )
        return samples.reshape(n, *self._shape).to(device=like.device, dtype=like.dtype)

    # --------------------------------------------------------------------------------- models
    def _generator(self) -> nn.Module:
        if self.generator is None:
            raise RuntimeError("GenerativeReplay: no generator yet (on_experience_start was not called).")
        return self.generator

    def _old_generator_on(self, device: torch.device) -> nn.Module:
        """The frozen previous generator on ``device`` (rebuilt from checkpointed weights at first use)."""
        if self._old_generator is None:
            if self._old_generator_pending is None:
                raise RuntimeError("GenerativeReplay: no old generator for this experience (it was never started).")
            frozen = snapshot(self._generator())
            frozen.load_state_dict(self._old_generator_pending)
            self._old_generator, self._old_generator_pending = frozen, None
        reference = next(self._old_generator.parameters(), None)
        if reference is not None and reference.device != device:
            self._old_generator.to(device)
        return self._old_generator

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "experience": self._experience,
            "trained": self._trained,
            "replay_loss_weight": self._weight,
            "generator_replay_loss_weight": self._generator_weight,
        }
        if self._shape is not None:
            state["shape"] = list(self._shape)
        if self._default_spec is not None:
            state["default_generator"] = {
                "shape": list(self._default_spec["shape"]),
                "input_range": list(self._default_spec["input_range"]),
            }
        if self.generator is not None:
            state["generator"] = cpu_copy(self.generator.state_dict())
        old = self._weights(self._old_generator, self._old_generator_pending)
        if old is not None:
            state["old_generator"] = old
        teacher = self._weights(self._teacher, self._teacher_pending)
        if teacher is not None:
            state["teacher"] = teacher
        return state

    @staticmethod
    def _weights(model: nn.Module | None, pending: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        if model is not None:
            return cpu_copy(model.state_dict())
        return None if pending is None else dict(pending)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._experience = int(state_dict.get("experience", -1))
        self._trained = bool(state_dict.get("trained", False))
        self._weight = float(state_dict.get("replay_loss_weight", self.replay_loss_weight))
        self._generator_weight = float(state_dict.get("generator_replay_loss_weight", self.replay_loss_weight))
        shape = state_dict.get("shape")
        self._shape = None if shape is None else tuple(int(s) for s in shape)
        spec = state_dict.get("default_generator")
        if spec is not None and (self.generator is None or self._default_spec is not None):
            self._default_spec = {
                "shape": [int(s) for s in spec["shape"]],
                "input_range": [float(v) for v in spec["input_range"]],
            }
            self.generator = _default_generator(self._default_spec, self.seed)
        weights = state_dict.get("generator")
        if weights is not None:
            if self.generator is None:
                raise RuntimeError(
                    "GenerativeReplay: the checkpoint holds the weights of a user's generator, but this callback "
                    "has none: pass the same `generator` as in the checkpointed run."
                )
            self.generator.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
        self._old_generator, self._teacher = None, None
        self._old_generator_pending = _tensors(state_dict.get("old_generator"))
        self._teacher_pending = _tensors(state_dict.get("teacher"))


def _check_samples(callback: GenerativeReplay, generator: nn.Module, sample: Tensor) -> None:
    """Two samples of ``generator`` (eval mode, fixed seed) must be shaped as the stream's ``sample``."""
    with probing(generator):  # BatchNorm statistics untouched
        callback._sample(generator, 2, torch.Generator().manual_seed(0), sample.float())


def _tensors(weights: Mapping[str, Any] | None) -> dict[str, Tensor] | None:
    return None if weights is None else {k: torch.as_tensor(v) for k, v in weights.items()}


def _default_generator(spec: Mapping[str, Any], seed: int) -> MlpVAE:
    # initialised from its own seed, the global RNG untouched: a resumed run rebuilds the generator
    # while loading the checkpoint, after the global RNG state is restored, and must not draw from it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix_seed(seed, 0, _INIT_SALT))
        return MlpVAE(tuple(spec["shape"]), input_range=(spec["input_range"][0], spec["input_range"][1]))


def _read(data: Dataset, index: Tensor) -> list[Tensor]:
    """The samples ``index`` of ``data`` as one collated batch."""
    positions = index.tolist()
    collate = collate_fn_of(data)
    getitems = getattr(data, "__getitems__", None)
    return collate(getitems(positions)) if getitems else collate([data[i] for i in positions])


def _value_range(data: Dataset, chunk: int = 4096) -> tuple[float, float]:
    """The smallest and largest input value of ``data`` (the default generator's output range)."""
    low, high = math.inf, -math.inf
    size = len(data)  # type: ignore[arg-type]
    for start in range(0, size, chunk):
        x = _read(data, torch.arange(start, min(start + chunk, size)))[0].float()
        low, high = min(low, float(x.min())), max(high, float(x.max()))
    if not low < high:
        # constant inputs: any range holding the value works
        low, high = low - 0.5, high + 0.5
    return low, high


def _epochs_per_experience(pl_module: ContinualModule) -> int:
    epochs = getattr(pl_module.datamodule, "_epochs_per_experience", None)
    return epochs if isinstance(epochs, int) and epochs > 0 else 1
