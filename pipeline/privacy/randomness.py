"""Where the DP mechanism's randomness comes from: the Poisson batch selection and the Gaussian noise.

The (epsilon, delta) a ledger reports holds only against someone who cannot predict which samples
each step used and what noise was added. So nothing of the mechanism is drawn from the config's
seed (which the server, and anyone with the run folder, knows) unless the user asks for it:

* ``secure`` (``privacy.secure_mode=true``): a cryptographically secure generator, ChaCha20 keyed
  with 32 bytes of ``os.urandom`` (the OS CSPRNG) for every hospital and round. Gaussians come from
  Box-Muller on 53-bit uniforms, and each noise value is the sum of four draws halved, Opacus's
  hardening against floating-point attacks on the Gaussian (Mironov 2012; Holohan and Braghin
  2021, section 5.1). Opacus's own secure mode needs ``torchcsprng``, which no longer builds.
* ``unpredictable`` (the default otherwise): torch's generator seeded with 64 bits of fresh OS
  entropy for every hospital and round; never derived from the config, never logged or saved.
  Unpredictable to anyone holding the config or the run folder; fast; not a CSPRNG.
* ``reproducible`` (``privacy.reproducible=true``): seeded from the config's seed, the hospital
  and the round, for bit-identical reruns (tests). The run is marked ``"private": false``.

:class:`PoissonBatchSampler` and :class:`NoiseFromRandomness` plug a source into Opacus's
optimizers and data loading in every clipping mode; the accountant is untouched.
"""

from __future__ import annotations

import math
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

SECURE, UNPREDICTABLE, REPRODUCIBLE = "secure", "unpredictable", "reproducible"
KINDS = (SECURE, UNPREDICTABLE, REPRODUCIBLE)
_REPRODUCIBLE_TAG = 0x44505F4D  # keeps the mechanism's seeds apart from the other uses of the run's seed


def randomness_kind(privacy) -> str:
    """The source the ``privacy`` config group asks for (secure_mode and reproducible exclude each other)."""
    if bool(privacy.get("reproducible", False)):
        return REPRODUCIBLE
    return SECURE if bool(privacy.secure_mode) else UNPREDICTABLE


class MechanismRandomness(ABC):
    """Uniforms for the batch selection and Gaussians for the noise of one hospital's round."""

    kind: str

    @abstractmethod
    def uniform(self, n: int) -> torch.Tensor:
        """``n`` independent uniforms in [0, 1) (float64, CPU)."""

    @abstractmethod
    def normal(self, shape: torch.Size, std: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Independent N(0, std^2) values of ``shape``."""


class TorchRandomness(MechanismRandomness):
    """torch's generator from a 64-bit seed (fresh OS entropy, or the config's seed when reproducible)."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind = kind
        self.generator = torch.Generator().manual_seed(seed)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64)

    def normal(self, shape: torch.Size, std: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.normal(0.0, std, size=tuple(shape), generator=self.generator, dtype=dtype).to(device)


class SecureRandomness(MechanismRandomness):
    """ChaCha20 keystream under a key from ``os.urandom``: a CSPRNG, with hardened Gaussians."""

    kind = SECURE
    HARDENING_DRAWS = 4  # Opacus's secure mode: the sum of 4 N(0, s^2) draws, halved, is N(0, s^2)
    _MASK53 = (1 << 53) - 1

    def __init__(self) -> None:
        # the 16-byte nonce is a 32-bit block counter (little-endian) then 96 random bits: the counter
        # starts at 0, so the stream has its whole 2^32 blocks (256 GiB); a random counter would
        # overflow after a random, possibly tiny, number of bytes
        nonce = bytes(4) + os.urandom(12)
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), nonce), mode=None)
        self._stream = cipher.encryptor()

    def _bytes(self, n: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(self._stream.update(bytes(n))), dtype=torch.uint8)

    def _uniform53(self, words: torch.Tensor) -> torch.Tensor:
        """53-bit uniforms in [0, 1) from 64-bit words."""
        return ((words >> 11) & self._MASK53).to(torch.float64) * (1.0 / (1 << 53))

    def uniform(self, n: int) -> torch.Tensor:
        return self._uniform53(self._bytes(8 * n).view(torch.int64))

    def _standard_normal(self, n: int) -> torch.Tensor:
        """Box-Muller: a 53-bit uniform for the radius (the tail), a 32-bit one for the angle, two values a pair."""
        pairs = (n + 1) // 2
        raw = self._bytes(12 * pairs)
        radius = torch.sqrt(-2.0 * torch.log1p(-self._uniform53(raw[: 8 * pairs].view(torch.int64))))
        angle = (raw[8 * pairs :].view(torch.int32).to(torch.float64) + 2.0**31) * (2.0 * math.pi / 2.0**32)
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]

    def normal(self, shape: torch.Size, std: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        total = torch.zeros(n, dtype=torch.float64)
        for _ in range(self.HARDENING_DRAWS):
            total += self._standard_normal(n)
        values = total * (std / math.sqrt(self.HARDENING_DRAWS))
        return values.reshape(tuple(shape)).to(device=device, dtype=dtype)


def mechanism_randomness(kind: str, seed: int, hospital: int, rnd: int, attempt: int = 0) -> MechanismRandomness:
    """A fresh source of ``kind`` for ``hospital``'s round ``rnd`` (try ``attempt``); ``seed`` is used
    only when reproducible, and a retried round never repeats the draws of the abandoned try."""
    if kind == SECURE:
        return SecureRandomness()
    if kind == UNPREDICTABLE:
        return TorchRandomness(kind, secrets.randbits(63))
    if kind == REPRODUCIBLE:
        entropy = [int(seed), int(hospital), int(rnd), _REPRODUCIBLE_TAG] + ([int(attempt)] if attempt else [])
        state = np.random.SeedSequence(entropy).generate_state(2)
        return TorchRandomness(kind, int(state[0]) << 31 ^ int(state[1]))
    raise ValueError(f"randomness {kind!r} is unknown; use one of {KINDS}")


def round_randomness(privacy, seed: int, hospital: int, rnd: int, attempt: int = 0) -> MechanismRandomness:
    """The source the ``privacy`` config asks for, fresh for ``hospital``'s round ``rnd`` (try ``attempt``)."""
    return mechanism_randomness(randomness_kind(privacy), seed, hospital, rnd, attempt)


class PoissonBatchSampler(Sampler[list[int]]):
    """Poisson sampling (each sample in each batch with probability ``sample_rate``), as Opacus's
    ``UniformWithReplacementSampler``, drawing from a :class:`MechanismRandomness`."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int, randomness: MechanismRandomness) -> None:
        if num_samples <= 0 or not 0 < sample_rate <= 1 or steps <= 0:
            raise ValueError("Poisson sampling needs samples, a rate in (0, 1] and a positive number of steps.")
        self.num_samples, self.sample_rate, self.steps, self.randomness = num_samples, sample_rate, steps, randomness

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            chosen = self.randomness.uniform(self.num_samples) < self.sample_rate
            yield torch.nonzero(chosen, as_tuple=False).reshape(-1).tolist()


def poisson_loader(dataset: Dataset, sample_rate: float, randomness: MechanismRandomness) -> DataLoader:
    """A data loader of ``1 / sample_rate`` Poisson batches a pass (empty batches keep their shape)."""
    sampler = PoissonBatchSampler(len(dataset), sample_rate, round(1 / sample_rate), randomness)
    first = dataset[0]
    collate = wrap_collate_with_empty(
        collate_fn=default_collate,
        sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
        dtypes=[dtype_safe(x) for x in first],
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)


class NoiseFromRandomness:
    """Mixin for Opacus's DP optimizers: the Gaussian noise comes from ``self.randomness``.

    Same computation as Opacus's ``add_noise`` (std ``noise_multiplier * max_grad_norm`` on the
    summed clipped gradient), with the draws taken from the hospital's :class:`MechanismRandomness`.
    """

    randomness: MechanismRandomness

    def add_noise(self) -> None:
        std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm
        params = list(self.params)
        for p in params:
            _check_processed_flag(p.summed_grad)
        sizes = [p.summed_grad.numel() for p in params]
        reference = params[0].summed_grad
        if std > 0:  # one draw for every parameter of the step (a CSPRNG's per-call cost dominates small tensors)
            flat = self.randomness.normal(torch.Size([sum(sizes)]), std, reference.dtype, reference.device)
            noises = torch.split(flat, sizes)
        else:
            noises = [torch.zeros(n, dtype=reference.dtype, device=reference.device) for n in sizes]
        for p, noise in zip(params, noises, strict=True):
            p.grad = (p.summed_grad + noise.view_as(p.summed_grad)).view_as(p)
            _mark_as_processed(p.summed_grad)


_NOISED: dict[type, type] = {}


def draw_noise_from(optimizer: torch.optim.Optimizer, randomness: MechanismRandomness) -> torch.optim.Optimizer:
    """Make an Opacus DP optimizer take its noise from ``randomness`` (in place); returns it."""
    cls = type(optimizer)
    if not issubclass(cls, NoiseFromRandomness):
        if cls not in _NOISED:
            _NOISED[cls] = type(f"{cls.__name__}WithOwnNoise", (NoiseFromRandomness, cls), {})
        optimizer.__class__ = _NOISED[cls]
    optimizer.randomness = randomness
    return optimizer
