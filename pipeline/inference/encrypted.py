"""Encrypted inference (CKKS, TenSEAL): the data owner's key stays with the data owner.

Two parties, two objects, two contexts:

* :class:`DataOwner` (a hospital or clinic, possibly outside the federation) makes its own CKKS
  context with the secret key, encrypts its images, hands out :meth:`DataOwner.evaluation_context`
  (parameters, public, relinearisation and Galois keys: never the secret key) and alone decrypts.
* :class:`ModelOwner` holds the plaintext weights, compiled by :func:`he_network` into CKKS
  operations, and an evaluation context it checks to hold no secret key; it evaluates the network
  on the ciphertext and returns encrypted logits. It can neither decrypt the query nor the result.

Queries and results are bytes (:func:`pack` / :func:`unpack`); :mod:`pipeline.inference.session`
runs the model owner in its own process and carries them across. Two layouts:

* ``im2col`` (one image per query): TenSEAL's im2col encoding (``ts.im2col_encoding``) puts the
  image's convolution windows in one ciphertext, slot ``r * windows + w`` holding kernel position
  ``r`` of window ``w`` (a 28x28 image with a 7x7 stride-3 kernel: 64 windows x 49 positions, 3136
  of the 4096 slots of a degree-8192 ring, so no second image fits in a query). The model owner
  works on the SEAL ciphertexts themselves (:class:`SealOps`, through ``tenseal.sealapi``), since
  TenSEAL's vectors expose neither rotations nor slot-wise plaintext products:

  - convolution, per filter: one product with the kernel repeated across the windows, then
    ``log2(slots / windows)`` rotations by multiples of ``windows`` that add up the kernel
    positions; every block of ``windows`` slots then holds the whole feature map;
  - first linear layer: each feature map times a plaintext whose block ``j`` holds unit ``j``'s
    weights for that map, the maps added, then ``log2(windows)`` rotations adding up each block:
    unit ``j`` lands in slot ``j * windows``;
  - a later linear layer: per output ``k`` the units times their weights (a mask on the slots
    ``j * windows``), rotated ``k`` slots to the right, added, then ``log2(units)`` rotations by
    multiples of ``windows``: output ``k`` lands in slot ``k`` (so it takes at most ``windows``
    outputs).

  ``model=he_cnn`` costs 6 rotations per filter plus 12, against one rotation per input value of
  each linear layer with TenSEAL's ``mm`` (diagonal method): 36 instead of about 300. The number
  of windows must be a power of two (the block sums are rotations by powers of two).
* ``slots`` (batch: up to ``degree / 2`` images per query): one ciphertext per pixel, slot ``i``
  holding image ``i`` (CryptoNets' layout, Gilad-Bachrach et al. 2016); the network is weighted
  sums and squares of whole ciphertexts, no rotations and no Galois keys. Its query size does not
  depend on the batch (one ciphertext per pixel), so it pays off for large batches only.

Each activation ``a*x^2 + b*x`` (:class:`models.he_cnn.ScaledSquare`) is evaluated as
``x^2 + (b/a)*x`` (one level: the square and the plain product rescale alike) and its factor ``a``
is folded into the next linear layer's weights, so the network costs one multiplicative level per
layer: conv, square, linear, square, linear = 5 for ``model=he_cnn``.

TenSEAL rescales after every multiplication and then calls the result's scale the global scale
``2^26``, although dividing by the dropped prime ``q`` (a 26-bit prime, not a power of two) left it
at ``2^52 / q``: each level multiplies the value by ``2^26 / q`` (1.001 to 1.008 for the default
primes), 1.8% after five levels. :class:`SealOps` does the same. :func:`rescale_factors` recomputes
the primes as SEAL chooses them (checked against the context's modulus chain) and
:meth:`HENetwork.calibrated` divides every plaintext weight by the factors its product will pick
up, so the encrypted logits match the plaintext ones to CKKS's noise (about 1e-3 for he_cnn).
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tenseal as ts
import torch
from tenseal import sealapi
from torch import nn

from models.he_cnn import ScaledSquare, conv_windows
from pipeline.errors import ConfigError, DataError

IM2COL = "im2col"
SLOTS = "slots"
LAYOUTS = (IM2COL, SLOTS)
# Layers :func:`he_network` evaluates, and those that are the identity at inference.
EVALUATED = (nn.Conv2d, nn.Linear, nn.Flatten, ScaledSquare)
IDENTITY = (nn.Identity, nn.Dropout)
# The compiled network must reproduce the model's logits this closely (float64 against float32).
COMPILE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CkksParams:
    """The data owner's CKKS parameters: ring degree, modulus primes (bits) and scale (bits).

    The default (degree 8192, 4096 slots; 218 bits, the 128-bit-secure maximum for that degree)
    gives the five levels ``model=he_cnn`` uses. The last, special prime is large (52 bits), since
    the noise of a rotation's key switching shrinks with it (31 bits left the logits only about
    1e-2 exact); the first, 36 bits, is what the logits are decrypted under: it holds values up to
    2^9 at scale 2^26.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (36, 26, 26, 26, 26, 26, 52)
    scale_bits: int = 26

    @property
    def depth(self) -> int:
        """Multiplicative levels available: the primes between the first and the special one."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        """Values one ciphertext holds."""
        return self.poly_modulus_degree // 2


@dataclass(frozen=True)
class QuerySpec:
    """What the model owner publishes so that a data owner can encrypt for it (no weights)."""

    in_channels: int
    image_size: int
    kernel_size: int
    stride: int
    conv_channels: int
    num_classes: int
    depth: int
    linear_outputs: tuple[int, ...]  # units of each linear layer, the logits last

    def __post_init__(self) -> None:
        object.__setattr__(self, "linear_outputs", tuple(int(n) for n in self.linear_outputs))  # JSON gives a list

    @property
    def windows(self) -> int:
        """Convolution windows of an image (output positions)."""
        return conv_windows(self.image_size, self.kernel_size, self.stride) ** 2

    def check(self, params: CkksParams, layout: str, batch: int = 1) -> None:
        """Raise ConfigError when ``params`` cannot hold this network's queries in ``layout``."""
        if layout not in LAYOUTS:
            raise ConfigError(f"layout {layout!r}: use one of {list(LAYOUTS)}")
        if self.depth > params.depth:
            raise ConfigError(
                f"the network needs {self.depth} multiplicative levels, the CKKS parameters give {params.depth} "
                f"(coeff_mod_bit_sizes {list(params.coeff_mod_bit_sizes)}); add primes and raise the degree"
            )
        if layout == IM2COL:
            self._check_im2col(params.slots)
        elif not 1 <= batch <= params.slots:
            raise ConfigError(f"a batch query holds 1..{params.slots} images (one per slot), not {batch}")

    def _check_im2col(self, slots: int) -> None:
        """Raise ConfigError unless the im2col evaluation (see the module docstring) fits ``slots``."""
        windows, positions = self.windows, _pow2(self.kernel_size**2)
        side = conv_windows(self.image_size, self.kernel_size, self.stride)
        if windows & (windows - 1):
            raise ConfigError(
                f"encrypted inference needs a power-of-two number of convolution windows; model.kernel_size="
                f"{self.kernel_size}, model.stride={self.stride} give {side}x{side}={windows} at {self.image_size}x"
                f"{self.image_size} (the default 7 and 3 give 8x8=64 at 28x28)"
            )
        if windows * positions > slots:
            raise ConfigError(
                f"an im2col query needs {windows * positions} slots ({windows} windows of {self.kernel_size}x"
                f"{self.kernel_size}, padded to {positions}); the ring has {slots}: raise the degree"
            )
        units = self.linear_outputs
        if units[0] * windows > slots:
            raise ConfigError(f"the first linear layer's {units[0]} units x {windows} windows exceed {slots} slots")
        for i, (inputs, outputs) in enumerate(zip(units, units[1:], strict=False), start=1):
            stride = windows if i == 1 else 1
            if outputs > stride or _pow2(inputs) * stride > slots:
                raise ConfigError(
                    f"linear layer {i + 1} ({inputs} -> {outputs}) does not fit the im2col evaluation; it takes a "
                    "convolution, one hidden linear layer and the logits (Conv2d -> x^2 -> Linear -> x^2 -> Linear)"
                )


@dataclass
class HEConv:
    """The convolution: weights ``(out, in, k, k)``, bias ``(out,)``, stride."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int


@dataclass
class HESquare:
    """``x^2 + linear * x`` (an activation whose factor went into the next linear layer)."""

    linear: float


@dataclass
class HELinear:
    """A linear layer as the vector-matrix product ``x @ weight + bias``: weight ``(in, out)``."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass
class HENetwork:
    """A network as CKKS operations: one convolution, then squares and linear layers."""

    conv: HEConv
    layers: list[HESquare | HELinear]
    spec: QuerySpec

    def plain(self, x: np.ndarray) -> np.ndarray:
        """The same arithmetic in float64 on normalised images ``(N, C, H, W)``: the compiled logits."""
        conv = torch.nn.functional.conv2d(
            torch.from_numpy(x).double(),
            torch.from_numpy(self.conv.weight),
            torch.from_numpy(self.conv.bias),
            stride=self.conv.stride,
        )
        out = conv.flatten(1).numpy()
        for layer in self.layers:
            out = out * out + layer.linear * out if isinstance(layer, HESquare) else out @ layer.weight + layer.bias
        return out

    def calibrated(self, factors: Sequence[float]) -> HENetwork:
        """The network with plaintext weights that undo ``factors`` (see :func:`rescale_factors`).

        ``factors[l]`` is what the ``l``-th multiplication's rescale multiplies its result by. A
        product with plaintext weights divides them by it; a square's factor (and the running one
        of the value squared) is carried on and divided out of the next linear layer's weights.
        """
        if len(factors) < self.spec.depth:
            raise ConfigError(f"the network needs {self.spec.depth} levels, the context has {len(factors)}")
        conv = replace(self.conv, weight=self.conv.weight / factors[0])
        layers: list[HESquare | HELinear] = []
        carried = 1.0  # the ciphertext holds carried * the true value
        for layer, factor in zip(self.layers, factors[1:], strict=False):
            if isinstance(layer, HESquare):
                layers.append(HESquare(layer.linear * carried))
                carried = carried * carried * factor
            else:
                layers.append(HELinear(layer.weight / (carried * factor), layer.bias))
                carried = 1.0
        return HENetwork(conv, layers, self.spec)

    def evaluate_im2col(self, channels: list[sealapi.Ciphertext], ops: SealOps) -> tuple[sealapi.Ciphertext, int]:
        """Encrypted logits of one image given as one im2col ciphertext per input channel.

        Returns the ciphertext and the slot stride of the logits in it (logit ``k`` in slot
        ``k * stride``); see the module docstring for the layout of each step.
        """
        windows, slots = self.spec.windows, ops.slots
        blocks = slots // windows
        maps = []
        for kernels, bias in zip(self.conv.weight, self.conv.bias, strict=True):
            products = [
                ops.mul_plain(enc, np.repeat(k.reshape(-1), windows)) for enc, k in zip(channels, kernels, strict=True)
            ]
            out = ops.fold(ops.rescale(ops.add_all(products)), windows, blocks)
            maps.append(ops.add_plain(out, np.full(slots, float(bias))))
        vec, stride = None, windows
        for layer in self.layers:
            if isinstance(layer, HESquare):
                if vec is None:
                    maps = [ops.square(m, layer.linear) for m in maps]
                else:
                    vec = ops.square(vec, layer.linear)
            elif vec is None:  # the first linear layer: unit j from block j of every feature map
                units = layer.weight.shape[1]
                products = []
                for i, m in enumerate(maps):
                    weights = np.zeros(slots)
                    weights[: units * windows] = layer.weight[i * windows : (i + 1) * windows].T.reshape(-1)
                    products.append(ops.mul_plain(m, weights))
                vec = ops.fold(ops.rescale(ops.add_all(products)), 1, windows)
                bias = np.zeros(slots)
                bias[np.arange(units) * windows] = layer.bias
                vec = ops.add_plain(vec, bias)
            else:  # a later layer: output k gathered into slot k
                units, outputs = layer.weight.shape
                products = []
                for k in range(outputs):
                    mask = np.zeros(slots)
                    mask[np.arange(units) * stride] = layer.weight[:, k]
                    products.append(ops.rotate(ops.mul_plain(vec, mask), -k))
                vec = ops.fold(ops.rescale(ops.add_all(products)), stride, _pow2(units))
                bias = np.zeros(slots)
                bias[:outputs] = layer.bias
                vec, stride = ops.add_plain(vec, bias), 1
        return vec, stride

    def evaluate_slots(self, pixels: list[ts.CKKSVector]) -> list[ts.CKKSVector]:
        """Encrypted logits (one ciphertext per class) of a batch given as one ciphertext per pixel."""
        c_in, size = self.spec.in_channels, self.spec.image_size
        k, stride = self.spec.kernel_size, self.conv.stride
        side = conv_windows(size, k, stride)
        features = []
        for kernels, bias in zip(self.conv.weight, self.conv.bias, strict=True):
            for oy in range(side):
                for ox in range(side):
                    taps = [
                        pixels[(c * size + stride * oy + ky) * size + stride * ox + kx]
                        for c in range(c_in)
                        for ky in range(k)
                        for kx in range(k)
                    ]
                    features.append(_weighted_sum(taps, kernels.reshape(-1), float(bias)))
        for layer in self.layers:
            if isinstance(layer, HESquare):
                features = [_square(f, layer.linear) for f in features]
            else:
                features = [
                    _weighted_sum(features, column, float(b))
                    for column, b in zip(layer.weight.T, layer.bias, strict=True)
                ]
        return features


def _pow2(n: int) -> int:
    """The smallest power of two >= ``n``."""
    return 1 << max(0, int(n) - 1).bit_length()


def seal_bytes(obj: object) -> bytes:
    """A SEAL object (ciphertext, keys) serialized; ``tenseal.sealapi`` saves to files only."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "blob")
        obj.save(path)
        return Path(path).read_bytes()


def seal_load(kind: type, context: ts.Context, blob: bytes) -> object:
    """A SEAL object of ``kind`` (``sealapi.Ciphertext``, ``GaloisKeys``, ``RelinKeys``) read from bytes."""
    obj = kind()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "blob"
        path.write_bytes(blob)
        obj.load(context.seal_context().data, str(path))
    return obj


def seal_decrypt(context: ts.Context, blob: bytes) -> np.ndarray:
    """Every slot of a serialized SEAL ciphertext; only a context with the secret key can (ValueError otherwise)."""
    secret = context.secret_key().data  # ValueError: "the current context is public, it doesn't hold a Secret key"
    seal = context.seal_context().data
    plain = sealapi.Plaintext()
    sealapi.Decryptor(seal, secret).decrypt(seal_load(sealapi.Ciphertext, context, blob), plain)
    return np.asarray(sealapi.CKKSEncoder(seal).decode_double(plain))


class SealOps:
    """CKKS operations on SEAL ciphertexts under an evaluation context (the model owner's side of im2col).

    Slot-wise plaintext products, rotations, additions and squares, through ``tenseal.sealapi``.
    Every plaintext is encoded at the global scale, and after each rescale the ciphertext's scale is
    set back to the global one, as TenSEAL does: the drift this leaves is what
    :meth:`HENetwork.calibrated` divides out of the weights.
    """

    def __init__(self, context: ts.Context) -> None:
        self.context = context
        seal = context.seal_context().data
        self.evaluator, self.encoder = sealapi.Evaluator(seal), sealapi.CKKSEncoder(seal)
        self.slots, self.scale = int(self.encoder.slot_count()), float(context.global_scale)
        # TenSEAL's key objects are other Python types than sealapi's: carried across as bytes
        self.galois = seal_load(sealapi.GaloisKeys, context, seal_bytes(context.data.galois_keys()))
        self.relin = seal_load(sealapi.RelinKeys, context, seal_bytes(context.data.relin_keys()))

    def _plain(self, values: np.ndarray, like: sealapi.Ciphertext) -> sealapi.Plaintext:
        plain = sealapi.Plaintext()
        self.encoder.encode(np.asarray(values, dtype=float).tolist(), like.parms_id(), self.scale, plain)
        return plain

    def mul_plain(self, ct: sealapi.Ciphertext, values: np.ndarray) -> sealapi.Ciphertext:
        """``ct`` times plaintext ``values`` slot by slot (not rescaled; values padded with zeros)."""
        padded = np.zeros(self.slots)
        padded[: len(values)] = values
        out = sealapi.Ciphertext()
        self.evaluator.multiply_plain(ct, self._plain(padded, ct), out)
        return out

    def add_plain(self, ct: sealapi.Ciphertext, values: np.ndarray) -> sealapi.Ciphertext:
        """``ct`` plus plaintext ``values`` (a vector of every slot)."""
        out = sealapi.Ciphertext()
        self.evaluator.add_plain(ct, self._plain(values, ct), out)
        return out

    def add_all(self, cts: list[sealapi.Ciphertext]) -> sealapi.Ciphertext:
        """The sum of ``cts`` (same level and scale)."""
        out = sealapi.Ciphertext()
        self.evaluator.add_many(cts, out)
        return out

    def rescale(self, ct: sealapi.Ciphertext) -> sealapi.Ciphertext:
        """Drop the last prime of ``ct`` (in place) and call its scale the global one."""
        self.evaluator.rescale_to_next_inplace(ct)
        ct.scale = self.scale
        return ct

    def rotate(self, ct: sealapi.Ciphertext, steps: int) -> sealapi.Ciphertext:
        """``ct`` rotated ``steps`` slots to the left (right for negative steps)."""
        if steps == 0:
            return ct
        out = sealapi.Ciphertext()
        self.evaluator.rotate_vector(ct, int(steps), self.galois, out)
        return out

    def fold(self, ct: sealapi.Ciphertext, step: int, count: int) -> sealapi.Ciphertext:
        """Slot ``i`` becomes the sum of slots ``i, i + step, ..., i + (count - 1) * step`` (count: a power of 2)."""
        span = 1
        while span < count:
            out = sealapi.Ciphertext()
            self.evaluator.add(ct, self.rotate(ct, step * span), out)
            ct, span = out, span * 2
        return ct

    def square(self, ct: sealapi.Ciphertext, linear: float) -> sealapi.Ciphertext:
        """``ct^2 + linear * ct``, rescaled (both terms drop one prime, so they meet at the same level)."""
        sq = sealapi.Ciphertext()
        self.evaluator.square(ct, sq)
        self.evaluator.relinearize_inplace(sq, self.relin)
        self.rescale(sq)
        if not linear:
            return sq
        return self.add_all([sq, self.rescale(self.mul_plain(ct, np.full(self.slots, float(linear))))])


def _square(vec: ts.CKKSVector, linear: float) -> ts.CKKSVector:
    """``vec^2 + linear * vec`` (both terms rescale once, so they meet at the same level)."""
    return vec.square() + vec * linear if linear else vec.square()


def _weighted_sum(vectors: list[ts.CKKSVector], weights: np.ndarray, bias: float) -> ts.CKKSVector:
    """``sum_i weights[i] * vectors[i] + bias`` on ciphertexts (plain scalar products)."""
    total = vectors[0] * float(weights[0])
    for vec, w in zip(vectors[1:], weights[1:], strict=True):
        total += vec * float(w)
    return total + bias


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (the first 12 primes as bases)."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2 or any(n % p == 0 for p in bases):
        return n in bases
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def seal_primes(degree: int, bit_sizes: Sequence[int]) -> list[int]:
    """The moduli SEAL's ``CoeffModulus::Create(degree, bit_sizes)`` picks, in the same order.

    For each bit size, the largest primes below ``2^bits`` that are 1 mod ``2 * degree``, handed
    out smallest first to the positions of that size.
    """
    factor, found = 2 * degree, {}
    for bits in set(bit_sizes):
        value, primes = ((1 << bits) - 1) // factor * factor + 1, []
        while len(primes) < list(bit_sizes).count(bits) and value > 1 << (bits - 1):
            if _is_prime(value):
                primes.append(value)
            value -= factor
        found[bits] = primes
    return [found[bits].pop() for bits in bit_sizes]


def rescale_factors(context: ts.Context, params: CkksParams) -> list[float]:
    """``scale / q`` of the prime each successive multiplication drops (the last data prime first).

    Raises:
        ConfigError: ``params`` do not describe ``context`` (its modulus chain differs).
    """
    data = seal_primes(params.poly_modulus_degree, params.coeff_mod_bit_sizes)[:-1]  # the last one is special
    level = context.seal_context().data.first_context_data()
    for n in range(len(data), 0, -1):
        if level is None or level.total_coeff_modulus() != math.prod(data[:n]) % (1 << 64):
            raise ConfigError(f"CKKS parameters {params} do not match the evaluation context's modulus chain")
        level = level.next_context_data()
    return [float(context.global_scale) / q for q in reversed(data[1:])]


def _unsupported(model: nn.Module) -> str | None:
    """A line naming the layers CKKS cannot evaluate (first place of each kind), or None."""
    first: dict[str, str] = {}
    for name, module in model.named_modules():
        if not list(module.children()) and not isinstance(module, EVALUATED + IDENTITY):
            first.setdefault(type(module).__name__, name)
    if not first:
        return None
    kinds = ", ".join(f"{kind} (layer {name!r})" for kind, name in first.items())
    return (
        f"the model cannot be evaluated on encrypted images: {kinds} cannot (CKKS adds and multiplies; "
        "encrypted inference takes Conv2d, Linear, Flatten and x^2 activations); train with model=he_cnn"
    )


def _compile_layers(convs: list[nn.Conv2d], rest: list[nn.Module]) -> tuple[HEConv, list[HESquare | HELinear]]:
    """Fold the activations' factors into the following linear layers (see the module docstring)."""
    first = convs[0]
    if (
        len(convs) != 1
        or tuple(first.padding) != (0, 0)
        or tuple(first.dilation) != (1, 1)
        or first.groups != 1
        or first.kernel_size[0] != first.kernel_size[1]
        or first.stride[0] != first.stride[1]
    ):
        raise ConfigError(
            "encrypted inference takes one unpadded, undilated, square Conv2d as the first layer (im2col); "
            f"the model has {len(convs)} convolution(s), the first {first}"
        )
    weight = first.weight.detach().double().numpy()
    bias = np.zeros(weight.shape[0]) if first.bias is None else first.bias.detach().double().numpy()
    conv = HEConv(weight, bias, int(first.stride[0]))
    layers: list[HESquare | HELinear] = []
    scale, flat = 1.0, False
    for module in rest:
        if isinstance(module, nn.Flatten):
            flat = True
        elif isinstance(module, ScaledSquare):
            layers.append(HESquare(module.b / (module.a * scale)))
            scale = module.a * scale * scale
        elif isinstance(module, nn.Linear):
            if not flat:
                raise ConfigError("encrypted inference needs a Flatten between the convolution and the first Linear")
            w = module.weight.detach().double().numpy().T * scale
            b = np.zeros(w.shape[1]) if module.bias is None else module.bias.detach().double().numpy()
            layers.append(HELinear(w, b))
            scale = 1.0
        else:
            raise ConfigError(f"encrypted inference takes one Conv2d first; found {type(module).__name__} after it")
    if not layers or not isinstance(layers[-1], HELinear):
        raise ConfigError("encrypted inference needs a Linear layer last (the logits)")
    return conv, layers


def he_network(model: nn.Module, in_channels: int, image_size: int) -> HENetwork:
    """Compile ``model`` into CKKS operations, checked against its own float forward pass.

    Raises:
        ConfigError: a layer CKKS cannot evaluate (named), a layer order the compiler does not take,
            or a forward pass that is not the chain of its layers.
    """
    problem = _unsupported(model)
    if problem:
        raise ConfigError(problem)
    chain = [m for _, m in model.named_modules() if not list(m.children()) and not isinstance(m, IDENTITY)]
    if not chain or not isinstance(chain[0], nn.Conv2d):
        raise ConfigError("encrypted inference takes a Conv2d as the first layer")
    conv, layers = _compile_layers([m for m in chain if isinstance(m, nn.Conv2d)], chain[1:])
    linears = [layer for layer in layers if isinstance(layer, HELinear)]
    spec = QuerySpec(
        in_channels=in_channels,
        image_size=image_size,
        kernel_size=int(conv.weight.shape[-1]),
        stride=conv.stride,
        conv_channels=int(conv.weight.shape[0]),
        num_classes=int(linears[-1].weight.shape[1]),
        depth=1 + len(layers),
        linear_outputs=tuple(int(layer.weight.shape[1]) for layer in linears),
    )
    net = HENetwork(conv, layers, spec)
    x = np.random.default_rng(0).normal(0.0, 1.0, (2, in_channels, image_size, image_size))
    was_training = model.training
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x).float()).double().numpy()
    model.train(was_training)
    try:
        compiled = net.plain(x)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"the model's layers do not chain as Conv2d -> ... -> Linear ({err})") from None
    if compiled.shape != expected.shape or not np.allclose(
        compiled, expected, rtol=COMPILE_TOLERANCE, atol=COMPILE_TOLERANCE
    ):
        raise ConfigError(
            "the model's forward pass is not the chain of its layers; encrypted inference cannot follow it"
        )
    return net


def pack(header: dict, blobs: list[bytes]) -> bytes:
    """A message: a JSON header and serialized ciphertexts, each length-prefixed."""
    head = json.dumps(header).encode()
    parts = [struct.pack("<I", len(head)), head]
    for blob in blobs:
        parts += [struct.pack("<Q", len(blob)), blob]
    return b"".join(parts)


def unpack(message: bytes) -> tuple[dict, list[bytes]]:
    """The header and ciphertexts of a :func:`pack` message."""
    (n,) = struct.unpack_from("<I", message, 0)
    header, pos, blobs = json.loads(message[4 : 4 + n]), 4 + n, []
    while pos < len(message):
        (size,) = struct.unpack_from("<Q", message, pos)
        blobs.append(message[pos + 8 : pos + 8 + size])
        pos += 8 + size
    return header, blobs


@dataclass
class DataOwner:
    """The party with the images and the only CKKS secret key.

    Args:
        spec: the model owner's published :class:`QuerySpec`.
        params: its own CKKS parameters (checked against ``spec``).
        layout: ``im2col`` (one image per query, Galois keys made) or ``slots`` (batches).
        batch: images per query in the ``slots`` layout.
    """

    spec: QuerySpec
    params: CkksParams = field(default_factory=CkksParams)
    layout: str = IM2COL
    batch: int = 1

    def __post_init__(self) -> None:
        self.spec.check(self.params, self.layout, self.batch)
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=int(self.params.poly_modulus_degree),
                coeff_mod_bit_sizes=list(self.params.coeff_mod_bit_sizes),
            )
        except ValueError as err:
            raise ConfigError(f"CKKS parameters {self.params} refused by SEAL ({err})") from None
        ctx.global_scale = 2.0**self.params.scale_bits
        if self.layout == IM2COL:
            ctx.generate_galois_keys()
        self.context = ctx

    def evaluation_context(self) -> bytes:
        """What the model owner gets once: the parameters and the public evaluation keys, no secret key."""
        return pack({"ckks": asdict(self.params)}, [self.context.serialize(save_secret_key=False)])

    def encrypt(self, x: np.ndarray) -> bytes:
        """A query for normalised images ``x`` ``(N, C, H, W)``: one image (im2col) or a batch (slots)."""
        spec = self.spec
        if x.shape[1:] != (spec.in_channels, spec.image_size, spec.image_size):
            raise DataError(
                f"images of shape {tuple(x.shape[1:])}; the model takes ({spec.in_channels}, {spec.image_size}, "
                f"{spec.image_size})"
            )
        if self.layout == IM2COL:
            if len(x) != 1:
                raise ValueError(f"an im2col query holds one image, not {len(x)}")
            encoded = [
                ts.im2col_encoding(self.context, channel.tolist(), spec.kernel_size, spec.kernel_size, spec.stride)
                for channel in x[0]
            ]
            if int(encoded[0][1]) != spec.windows:
                raise ValueError(f"im2col gave {encoded[0][1]} windows, the network has {spec.windows}")
            return pack({"layout": IM2COL, "count": 1}, [seal_bytes(vec.ciphertext()[0]) for vec, _ in encoded])
        if not 1 <= len(x) <= self.batch:
            raise ValueError(f"a batch query holds 1..{self.batch} images, not {len(x)}")
        columns = x.reshape(len(x), -1).T
        return pack(
            {"layout": SLOTS, "count": len(x)}, [ts.ckks_vector(self.context, c.tolist()).serialize() for c in columns]
        )

    def decrypt(self, result: bytes) -> np.ndarray:
        """Logits ``(N, num_classes)`` of a result."""
        header, blobs = unpack(result)
        if header["layout"] == IM2COL:
            slots = seal_decrypt(self.context, blobs[0])
            return slots[None, : self.spec.num_classes * header["stride"] : header["stride"]]
        values = [np.asarray(ts.ckks_vector_from(self.context, b).decrypt()) for b in blobs]
        return np.stack(values, axis=1)[: header["count"]]


class ModelOwner:
    """The party with the weights: evaluates queries under the data owner's evaluation context.

    Raises:
        ConfigError: the evaluation context holds a secret key (the data owner must keep it).
    """

    def __init__(self, network: HENetwork, evaluation_context: bytes) -> None:
        header, (blob,) = unpack(evaluation_context)
        params = CkksParams(**{**header["ckks"], "coeff_mod_bit_sizes": tuple(header["ckks"]["coeff_mod_bit_sizes"])})
        self.context = ts.context_from(blob)
        if self.context.has_secret_key():
            raise ConfigError(
                "the evaluation context holds a secret key; the data owner must send it without "
                "(Context.serialize(save_secret_key=False))"
            )
        self.layout = IM2COL if self.context.has_galois_keys() else SLOTS
        network.spec.check(params, self.layout)
        self.network = network.calibrated(rescale_factors(self.context, params))
        self.ops = SealOps(self.context) if self.layout == IM2COL else None

    def evaluate(self, query: bytes) -> bytes:
        """Encrypted logits for a query (bytes in, bytes out).

        Raises:
            DataError: a query in the other layout than the evaluation keys were made for.
        """
        header, blobs = unpack(query)
        if header["layout"] != self.layout:
            raise DataError(f"a {header['layout']} query under {self.layout} evaluation keys")
        if self.ops is not None:
            channels = [seal_load(sealapi.Ciphertext, self.context, b) for b in blobs]
            logits, stride = self.network.evaluate_im2col(channels, self.ops)
            return pack({"layout": IM2COL, "count": 1, "stride": stride}, [seal_bytes(logits)])
        logits = self.network.evaluate_slots([ts.ckks_vector_from(self.context, b) for b in blobs])
        return pack({"layout": SLOTS, "count": header["count"]}, [v.serialize() for v in logits])
