"""Book-keeping per-sample clipping for DP-SGD: one forward and one backward pass per step.

Bu et al. 2023, "Differentially private optimization on large model at small cost". While the
model runs forward, each trainable layer's input is kept; during the backward pass the gradient
at its output is kept, and the parameters do not require grad, so autograd only propagates input
gradients. :meth:`BookKeepingModule.clip_gradients` then computes, from those two tensors per
layer,

* every sample's gradient norm over all layers (per layer whichever is cheaper for its shapes:
  the ghost norm ``sum_{t,t'} (a_t . a_t')(g_t . g_t')`` or the materialised per-sample gradient),
* Opacus's clipping factors ``c_i = min(1, C / (||g_i|| + 1e-6))``,
* each parameter's clipped sum ``sum_i c_i g_i`` (native ``convolution_backward`` kernels),

and writes the sums to ``p.grad``. Opacus's ghost-clipping optimizer
(:class:`~opacus.optimizers.DPOptimizerFastGradientClipping`) adds the Gaussian noise, divides
by the expected batch size and steps; the accountant is Opacus's. Batch selection and noise come
from the hospital's randomness (:mod:`pipeline.privacy.randomness`).

Layers with trainable parameters must be Conv1d/2d/3d, Linear, GroupNorm, LayerNorm or PReLU,
each run once per forward pass; anything else is refused when the model is wrapped.

Augmentation multiplicity (De et al. 2022): with ``copies`` = K, each batch holds K augmented
views of every sampled image, in consecutive rows. A sample's gradient is then the mean of its
views' gradients (the loss of a sample is the mean over its views), clipped as one: every
per-sample quantity sums the K rows of a sample before its norm is taken, so the sensitivity,
the noise and the accounting stay those of one image per sampled index.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizerFastGradientClipping
from torch import Tensor, nn
from torch.nn import grad as nn_grad
from torch.utils.data import DataLoader

from pipeline.errors import ConfigError

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
)
# Materialised per-sample gradients above this many elements (256 MiB in float32) use the ghost
# norm wherever it applies, whatever the arithmetic says.
MAX_MATERIALISED = 1 << 26

_CONV_WEIGHT_GRAD = {3: nn_grad.conv1d_weight, 4: nn_grad.conv2d_weight, 5: nn_grad.conv3d_weight}

# A parameter's clipped sum, given the clipping factors c (shape [batch]).
ClippedSum = Callable[[Tensor], Tensor]


@dataclass
class _Record:
    """What one layer left behind in the current step: its input, then its output gradient."""

    activation: Tensor
    generation: int
    grad: Tensor | None = None


@dataclass
class _Layer:
    """A layer with trainable parameters, and which of them were trainable when it was wrapped."""

    name: str
    module: nn.Module
    weight: bool
    bias: bool

    def parameters(self) -> list[nn.Parameter]:
        """The parameters bk trains (weight and/or bias)."""
        chosen = [(self.module.weight, self.weight), (getattr(self.module, "bias", None), self.bias)]
        return [p for p, on in chosen if on]


@dataclass
class _LayerTerms:
    """Per-sample squared norms of one layer's trainable parameters, and how to sum them clipped."""

    sq_norms: Tensor
    sums: dict[nn.Parameter, ClippedSum]
    copies: int = 1

    def add_per_row(self, p: nn.Parameter, per_row: Tensor) -> None:
        """From materialised per-row gradients [batch * copies, ...] of ``p``: a sample's rows are summed."""
        self.add_per_sample(p, per_row.reshape(len(per_row) // self.copies, self.copies, -1).sum(1))

    def add_per_sample(self, p: nn.Parameter, per_sample: Tensor) -> None:
        """From materialised per-sample gradients [batch, ...] of ``p``."""
        flat = per_sample.reshape(len(per_sample), -1)
        self.sq_norms = self.sq_norms + torch.linalg.vector_norm(flat, dim=1).square()
        self.sums[p] = lambda c: c @ flat

    def add_ghost(self, p: nn.Parameter, sq_norms: Tensor, clipped_sum: ClippedSum) -> None:
        """From squared norms computed without per-sample gradients, and a way to sum them clipped."""
        self.sq_norms = self.sq_norms + sq_norms
        self.sums[p] = clipped_sum


class BookKeepingModule(nn.Module):
    """Wraps a model so that each backward pass through it yields clipped per-sample gradient sums.

    Use with :class:`BookKeepingLoss`, whose ``backward()`` runs the single backward pass and then
    :meth:`clip_gradients`. Call :meth:`remove_hooks` to leave the wrapped model as it was.

    Args:
        module: the model; every layer with trainable parameters must be one of
            :data:`SUPPORTED_LAYERS` (else :class:`~pipeline.errors.ConfigError`).
        max_grad_norm: the clipping bound C.
        copies: rows per sample in a batch (augmentation multiplicity, module docstring); 1 = none.
        freeze_params: parameters do not require grad between forward and clipping, so that
            autograd skips their (unclipped) weight gradients. ``False`` lets autograd compute
            them and then overwrites them (slower; kept for measurement).
    """

    def __init__(self, module: nn.Module, max_grad_norm: float, copies: int = 1, freeze_params: bool = True) -> None:
        super().__init__()
        if copies < 1:
            raise ValueError(f"copies={copies} must be >= 1")
        self._module = module
        self.max_grad_norm = float(max_grad_norm)
        self.copies = int(copies)
        self.freeze_params = freeze_params
        self.layers = _trainable_layers(module)
        self.trainable = [p for layer in self.layers for p in layer.parameters()]
        self.per_sample_norms: Tensor | None = None  # of the last clipped batch
        self._specs = {layer.module: layer for layer in self.layers}
        self._records: dict[nn.Module, _Record] = {}
        self._generation = 0
        self._recording = False
        self._written: list[weakref.ref] = []
        self._handles = [layer.module.register_forward_hook(self._capture) for layer in self.layers]

    def forward(self, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return self._module(*args, **kwargs)
        self._generation += 1
        self._records = {}
        if self.freeze_params:
            self._set_requires_grad(False)
        self._recording = True
        try:
            return self._module(*args, **kwargs)
        finally:
            self._recording = False

    def remove_hooks(self) -> None:
        """Detach from the wrapped model and give its parameters back their ``requires_grad``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._records = {}
        self._set_requires_grad(True)

    @torch.no_grad()
    def clip_gradients(self) -> Tensor:
        """Per-sample norms of the last backward pass; writes ``sum_i c_i g_i`` to each ``p.grad``.

        Raises:
            RuntimeError: a second backward pass before the optimizer consumed the first one's
                gradients (Poisson sampling forbids accumulating batches, as in Opacus).
        """
        records, self._records = self._records, {}
        try:
            self._refuse_accumulation()
            rows = next((len(r.activation) for r in records.values()), 0)
            if rows % self.copies:
                raise RuntimeError(f"grad_sample_mode=bk: a batch of {rows} rows is not {self.copies} views per sample")
            batch = rows // self.copies
            cache: dict = {}
            terms = [
                _layer_terms(self._specs[layer], rec.activation, rec.grad, cache, self.copies)
                for layer, rec in records.items()
                if rec.grad is not None and batch > 0
            ]
            if terms:
                norms = torch.stack([t.sq_norms for t in terms]).sum(0).sqrt()
            else:
                norms = self.trainable[0].new_zeros(batch) if self.trainable else torch.zeros(batch)
            factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            sums = {p: fn for t in terms for p, fn in t.sums.items()}
            for p in self.trainable:
                p.grad = sums[p](factors.to(p.dtype)).view_as(p) if p in sums else torch.zeros_like(p)
            self._written = [weakref.ref(p.grad) for p in self.trainable]
            self.per_sample_norms = norms
            return norms
        finally:
            if self.freeze_params:
                self._set_requires_grad(True)

    def _refuse_accumulation(self) -> None:
        stale = [p.grad for p, ref in zip(self.trainable, self._written, strict=False) if p.grad is ref()]
        if stale and any(bool(g.any()) for g in stale if g is not None):
            raise RuntimeError(
                "grad_sample_mode=bk: two backward passes without optimizer.step(); "
                "Poisson-sampled DP-SGD takes one batch per step"
            )

    def _set_requires_grad(self, flag: bool) -> None:
        for p in self.trainable:
            p.requires_grad_(flag)

    def _capture(self, layer: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        """Forward hook: keep the layer's input; hook its output to keep the output gradient."""
        if not (self._recording and layer.training):
            return None
        if layer in self._records:
            raise RuntimeError(
                f"grad_sample_mode=bk: layer {self._specs[layer].name} ran twice in one forward pass; "
                "use privacy.grad_sample_mode=hooks"
            )
        record = _Record(inputs[0].detach(), self._generation)
        self._records[layer] = record
        replaced = None
        if not output.requires_grad:  # nothing upstream needs a gradient (first layer, frozen)
            replaced = output = output.detach().requires_grad_(True).clone()
        output.register_hook(lambda grad: self._keep_grad(layer, record, grad))
        return replaced

    def _keep_grad(self, layer: nn.Module, record: _Record, grad: Tensor) -> None:
        if record.generation != self._generation or record.grad is not None:
            raise RuntimeError(
                f"grad_sample_mode=bk: layer {self._specs[layer].name} got a gradient from another forward pass "
                "or a second backward pass; run exactly one backward per forward"
            )
        record.grad = grad.detach()


class BookKeepingLoss:
    """Criterion for :class:`BookKeepingModule`: per-sample losses whose ``backward()`` clips.

    The loss is reduced by a mean for reporting; gradients are taken of the per-sample sum (a
    sample's loss being the mean over its ``module.copies`` views), and the optimizer divides by
    the expected batch size (Opacus's ``loss_reduction="mean"``).
    """

    def __init__(self, module: BookKeepingModule, criterion: nn.Module) -> None:
        self.module = module
        self.criterion = copy.deepcopy(criterion)
        self.criterion.reduction = "none"

    def __call__(self, output: Tensor, target: Tensor) -> BookKeepingLossValue:
        return BookKeepingLossValue(self.module, self.criterion(output, target))


class BookKeepingLossValue:
    """One batch's per-sample losses; ``backward()`` is the step's single backward pass plus clipping."""

    def __init__(self, module: BookKeepingModule, per_sample: Tensor) -> None:
        self.module = module
        self.per_sample = per_sample

    def backward(self) -> None:
        (self.per_sample.sum() / self.module.copies).backward()
        self.module.clip_gradients()

    def detach(self) -> Tensor:
        return self.per_sample.detach().mean()

    def item(self) -> float:
        return self.detach().item()

    def __repr__(self) -> str:
        return f"BookKeepingLossValue({self.item():.4f})"


class BookKeepingOptimizer(DPOptimizerFastGradientClipping):
    """Opacus's ghost-clipping optimizer (noise, division by the expected batch size, step, accounting hook).

    Only :meth:`accumulate` differs: it copies ``p.grad`` with ``clone`` instead of
    ``copy.deepcopy`` (same result; measured 2.6 ms instead of 3.9 ms per step for the default CNN).
    """

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad.detach())
            else:
                p.summed_grad = p.grad.detach().clone()


def make_private_bookkeeping(
    engine: PrivacyEngine,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    copies: int = 1,
) -> tuple[BookKeepingModule, BookKeepingOptimizer, BookKeepingLoss, DataLoader]:
    """``engine.make_private`` for bk mode: the DP optimizer and the accounting stay Opacus's.

    Follows :meth:`opacus.PrivacyEngine.make_private` step by step (flat clipping, mean loss
    reduction, one process), with :class:`BookKeepingModule` in place of a GradSampleModule.
    ``data_loader`` must already be a Poisson loader; its length is the number of steps per epoch.
    ``copies``: augmented views per sample in each batch (module docstring).

    Raises:
        ConfigError: a layer bk cannot train (see :data:`SUPPORTED_LAYERS`).
    """
    params = set(module.parameters())
    if any(p not in params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("Module parameters are different than optimizer Parameters")
    engine.validate(module=module, optimizer=None, data_loader=None)  # BatchNorm & co., as Opacus
    wrapped = BookKeepingModule(module, max_grad_norm, copies)
    dp_loader = data_loader  # already a Poisson loader (pipeline.privacy.randomness.poisson_loader)
    sample_rate = 1 / len(dp_loader)
    dp_optimizer = BookKeepingOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=int(len(dp_loader.dataset) * sample_rate),
        loss_reduction="mean",
        secure_mode=False,  # the noise comes from the hospital's randomness (engine.draw_noise_from)
    )
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return wrapped, dp_optimizer, BookKeepingLoss(wrapped, criterion), dp_loader


# --- which layers, and their per-sample terms --------------------------------------------------

_PARAM_NAMES = {nn.PReLU: {"weight"}}


def _trainable_layers(module: nn.Module) -> list[_Layer]:
    """Layers holding trainable parameters; refuses any bk cannot give per-sample gradients."""
    layers, seen = [], set()
    for name, layer in module.named_modules():
        own = [(n, p) for n, p in layer.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        label = f"{name or '<model>'} ({type(layer).__name__})"
        allowed = _PARAM_NAMES.get(type(layer), {"weight", "bias"})
        if not isinstance(layer, SUPPORTED_LAYERS) or any(n not in allowed for n, _ in own):
            raise ConfigError(
                f"privacy.grad_sample_mode=bk cannot train layer {label}: no per-sample gradients for "
                "its parameters (bk supports Conv1d/2d/3d, Linear, GroupNorm, LayerNorm, PReLU); "
                "use privacy.grad_sample_mode=hooks"
            )
        if any(id(p) in seen for _, p in own):
            raise ConfigError(
                f"privacy.grad_sample_mode=bk cannot train layer {label}: it shares parameters with another "
                "layer; use privacy.grad_sample_mode=hooks"
            )
        seen.update(id(p) for _, p in own)
        names = {n for n, _ in own}
        layers.append(_Layer(name, layer, "weight" in names, "bias" in names))
    return layers


def _layer_terms(spec: _Layer, a: Tensor, g: Tensor, cache: dict, copies: int = 1) -> _LayerTerms:
    """Per-sample squared norms and clipped sums of one layer's trainable parameters.

    ``a`` and ``g`` have ``copies`` consecutive rows per sample. ``cache`` holds what layers of
    one step can share (patch Gram matrices).
    """
    layer = spec.module
    terms = _LayerTerms(a.new_zeros(len(a) // copies), {}, copies)
    if isinstance(layer, nn.Linear):
        _linear(terms, spec, a, g)
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        _conv(terms, spec, a, g, cache)
    elif isinstance(layer, (nn.GroupNorm, nn.LayerNorm)):
        if isinstance(layer, nn.GroupNorm):
            dims = tuple(range(2, a.dim()))  # everything but batch and channel
            x_hat = F.group_norm(a, layer.num_groups, eps=layer.eps) if spec.weight else None
        else:
            dims = tuple(range(1, a.dim() - len(layer.normalized_shape)))  # everything not normalised
            x_hat = F.layer_norm(a, layer.normalized_shape, eps=layer.eps) if spec.weight else None
        if x_hat is not None:
            terms.add_per_row(layer.weight, (x_hat * g).sum(dims) if dims else x_hat * g)
        if spec.bias:
            terms.add_per_row(layer.bias, g.sum(dims) if dims else g)
    elif isinstance(layer, nn.PReLU):
        neg = a.clamp(max=0) * g
        one = layer.weight.numel() == 1
        terms.add_per_row(layer.weight, neg.flatten(1).sum(1) if one else neg.sum(tuple(range(2, a.dim()))))
    else:
        raise AssertionError(f"unsupported layer {type(layer).__name__} passed the wrap-time check")
    return terms


def _linear(terms: _LayerTerms, spec: _Layer, a: Tensor, g: Tensor) -> None:
    """A sample's views are more positions of one sample: ``sum_t a_t g_t`` runs over all of them."""
    layer, batch = spec.module, len(a) // terms.copies
    d_in, d_out = layer.in_features, layer.out_features
    a, g = a.reshape(batch, -1, d_in), g.reshape(batch, -1, d_out)
    steps = a.shape[1]
    if spec.bias:
        terms.add_per_sample(layer.bias, g.sum(1))
    if not spec.weight:
        return
    if steps * (d_in + d_out) >= d_in * d_out:  # materialising is cheaper
        terms.add_per_sample(layer.weight, torch.bmm(g.transpose(1, 2), a))
        return
    if steps == 1:
        ghost = a[:, 0].pow(2).sum(1) * g[:, 0].pow(2).sum(1)
    else:
        ghost = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    terms.add_ghost(layer.weight, ghost, lambda c: (g * c[:, None, None]).reshape(-1, d_out).T @ a.reshape(-1, d_in))


def _conv(terms: _LayerTerms, spec: _Layer, a: Tensor, g: Tensor, cache: dict) -> None:
    """Ghost norm where it applies and costs less than materialising; else grouped-conv per-sample grads."""
    layer, batch, dims = spec.module, len(a), a.dim() - 2  # batch: rows (copies per sample)
    if spec.bias:
        terms.add_per_row(layer.bias, g.sum(tuple(range(2, g.dim()))))
    if not spec.weight:
        return
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":  # pad explicitly, as Conv does
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        a = F.pad(a, layer._reversed_padding_repeated_twice, mode=mode)
        padding: tuple[int, ...] = (0,) * dims
    else:
        padding = tuple(layer.padding)
    weight_grad = _CONV_WEIGHT_GRAD[a.dim()]
    stride, dilation, groups = tuple(layer.stride), tuple(layer.dilation), layer.groups
    out_ch, in_per_group = layer.weight.shape[:2]
    patch = in_per_group * math.prod(layer.kernel_size)
    positions = math.prod(g.shape[2:])
    copies = terms.copies  # a sample's views are more positions of one sample in the ghost norm
    ghost_applies = groups == 1 and dims <= 2
    ghost_cheaper = copies * positions * (patch + out_ch) < out_ch * patch or batch * out_ch * patch > MAX_MATERIALISED
    if not (ghost_applies and ghost_cheaper):
        # Each sample its own group: one native kernel gives all per-sample weight gradients.
        per_sample = weight_grad(
            a.reshape(1, batch * a.shape[1], *a.shape[2:]),
            (batch * out_ch, in_per_group, *layer.kernel_size),
            g.reshape(1, batch * out_ch, *g.shape[2:]),
            stride,
            padding,
            dilation,
            groups * batch,
        )
        terms.add_per_row(layer.weight, per_sample.view(batch, -1))
        return
    grams = _patch_gram(a, tuple(layer.kernel_size), padding, stride, dilation, cache, copies)
    gf = _views_as_positions(g.reshape(batch, out_ch, positions), copies)
    ghost = (grams * torch.bmm(gf.transpose(1, 2), gf)).sum((1, 2))
    scale = (-1,) + (1,) * (g.dim() - 1)
    terms.add_ghost(
        layer.weight,
        ghost,
        lambda c: weight_grad(
            a, layer.weight.shape, g * c.repeat_interleave(copies).view(scale), stride, padding, dilation, groups
        ),
    )


def _views_as_positions(x: Tensor, copies: int) -> Tensor:
    """[rows, d, positions] with ``copies`` rows per sample -> [samples, d, copies * positions]."""
    if copies == 1:
        return x
    rows, d, positions = x.shape
    return x.reshape(rows // copies, copies, d, positions).transpose(1, 2).reshape(rows // copies, d, -1)


def _patch_gram(
    a: Tensor,
    kernel: tuple[int, ...],
    padding: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    cache: dict,
    copies: int = 1,
) -> Tensor:
    """Per-sample Gram matrices [B, positions, positions] of a conv's input patches (a_t . a_t').

    With ``copies`` rows per sample, a sample's positions are those of all its views. Layers
    reading the same input with the same geometry (a residual unit's first conv and its strided
    shortcut) share one in ``cache``.
    """
    key = (a.data_ptr(), tuple(a.shape), tuple(a.stride()), kernel, padding, stride, dilation, copies)
    if key not in cache:
        if a.dim() == 3:  # unfold is 2-d only: a length-L signal is a 1 x L image
            a, kernel, padding, stride, dilation = (
                a.unsqueeze(2),
                (1, *kernel),
                (0, *padding),
                (1, *stride),
                (1, *dilation),
            )
        patches = F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)  # [B, patch, positions]
        patches = _views_as_positions(patches, copies)
        cache[key] = torch.bmm(patches.transpose(1, 2), patches)
    return cache[key]
