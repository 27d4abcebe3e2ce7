"""``ModelSpec``: what the engines need of a model, read off one ``nn.Module``.

The module is the single definition. The spec records its parameters (names, shapes,
order: exactly what the engine stacks per client and what the codecs see), draws the
initial model from a keyed generator, runs the module batched over clients
(``models.batched``, or a registered fast path, ``models.fast``), and checks before
any training that the module is one the engines can train (:meth:`ModelSpec.check`).

Randomness. A module that declares ``dropout`` > 0 and ``dropout_units`` and takes
``forward(x, mask)`` gets its keep-mask from the engine, keyed by (seed, round, client,
local step): its numbers do not depend on ``cohort_chunk``, the engine or the launcher
(every built-in model works so). A user's module that draws its own randomness (an
``nn.Dropout`` inside) still trains, in training mode, from torch's global generator,
which the engines seed from the run's keys before each chunk (cohort) or client
(loop): the same config gives the same numbers, run after run, but they change with
``cohort_chunk``, with the engine, and between the batched and per-client paths.
Evaluation runs the module in eval mode (``nn.Dropout`` off) without a mask.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.sim.models import batched
from fedbench.sim.models.fast import fast_path
from fedbench.sim.models.nets import Net

log = logging.getLogger(__name__)


class ModelSpec:
    """The engines' view of ``module``: parameters, init, batched forward, fast path.

    ``factory`` builds a fresh module (used for the initial model of modules that are
    not a built-in ``Net``: it is constructed under a seeded global generator).
    ``in_features`` and ``num_classes``, when given, enable :meth:`check`'s dry run.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        label: str | None = None,
        factory: Callable[[], nn.Module] | None = None,
        in_features: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.template = module
        self.label = label or type(module).__name__
        self.factory = factory
        self.in_features = in_features if in_features is not None else _in_features(module)
        self.num_classes = num_classes
        named = list(module.named_parameters())
        for name, p in named:
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise ValueError(
                    f"model {self.label}: parameter {name} is lazy (nn.Lazy*): give the "
                    "layer its input size so the engine can stack it before training"
                )
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        units = int(getattr(module, "dropout_units", 0) or 0)
        p = float(getattr(module, "dropout", 0.0) or 0.0)
        self.takes_mask = units > 0 and p > 0
        self.dropout = p if self.takes_mask else 0.0
        self.dropout_units = units if self.takes_mask else 0
        self.fast = fast_path(module)
        self.hand_backward = callable(getattr(self.fast, "backward_into", None))
        # False where vmap cannot batch this module (``check`` probes): per-client paths
        self.batchable = True  # training steps
        self.eval_batchable = True  # evaluation forward
        self.activation_bytes_per_sample = 0
        self._buffers: dict[torch.device, dict[str, torch.Tensor]] = {}

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def module(self) -> nn.Module:
        """A copy of the module (the loop engine trains it in place)."""
        return copy.deepcopy(self.template)

    def init(self, gen: torch.Generator) -> list[torch.Tensor]:
        """The initial model, a list of CPU tensors in ``parameters()`` order.

        A :class:`~fedbench.sim.models.nets.Net` (every built-in; subclass it to define
        your own ``init(gen)``) draws from ``gen`` only;
        another is built anew by ``factory`` under torch's global generator seeded from
        ``gen`` (its own init scheme, reproducibly), or, without a factory, copied.
        """
        if isinstance(self.template, Net):
            params = [p.float() for p in self.template.init(gen)]
        elif self.factory is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                params = [p.detach().float().clone() for p in self.factory().parameters()]
        else:
            params = [p.detach().float().clone().cpu() for p in self.template.parameters()]
        self.check_params(params, "init")
        return params

    def check_params(self, params: Sequence[torch.Tensor], what: str) -> None:
        """ValueError unless ``params`` are the module's parameters (count and shapes),
        stacked over clients when ``what`` says so (leading dim ignored)."""
        stacked = what.startswith("stacked")
        shapes = [tuple(p.shape[1:] if stacked else p.shape) for p in params]
        if len(shapes) != len(self.shapes):
            raise ValueError(
                f"model {self.label}: {what} has {len(shapes)} tensors but the module has "
                f"{len(self.shapes)} parameters ({', '.join(self.names[:5])}...)"
            )
        for name, want, got in zip(self.names, self.shapes, shapes, strict=True):
            if want != got:
                raise ValueError(
                    f"model {self.label}: {what} gives {name} the shape {got}, but the "
                    f"module's parameter is {want}"
                )

    def buffers(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The module's buffers on ``device`` (cached), passed to ``functional_call``."""
        if device not in self._buffers:
            self._buffers[device] = {k: b.to(device) for k, b in self.template.named_buffers()}
        return self._buffers[device]

    def forward(
        self, params: Sequence[torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits (clients, batch, classes) from x (clients, batch, features), stacked
        params (clients, *shape); eval mode when ``mask`` is None."""
        if self.fast is not None:
            return self.fast.forward(params, x, mask)
        return batched.forward(self, params, x, mask, train=mask is not None)

    def check(self) -> None:
        """Refuse, before training, a module the engines cannot train correctly.

        Checks the parameters (floating, no lazy ones, no plain tensor attributes that
        would silently stay untrained), a fast path's layout, then a dry run on two
        samples: the logits' shape, that forward neither adds nor reshapes parameters
        nor updates buffers (batch-norm statistics), that every parameter gets a
        gradient, and whether ``vmap`` can batch it (if not: one log line, per-client).
        Also measures the activations autograd saves per sample (for ``auto_chunk``).
        """
        m = self.template
        if not self.names:
            raise ValueError(f"model {self.label} has no parameters to train")
        for name, p in m.named_parameters():
            if not p.is_floating_point():
                raise ValueError(f"model {self.label}: parameter {name} is {p.dtype}, not float")
        for mod_name, sub in m.named_modules():
            for attr, v in vars(sub).items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    where = f"{mod_name}.{attr}" if mod_name else attr
                    raise ValueError(
                        f"model {self.label}: {where} is a plain tensor attribute: wrap it in "
                        "nn.Parameter (trained and sent) or register_buffer (fixed)"
                    )
        if self.fast is not None and [tuple(s) for s in self.fast.shapes] != self.shapes:
            raise ValueError(
                f"model {self.label}: its fast path expects parameter shapes "
                f"{self.fast.shapes[:4]}... but the module has {self.shapes[:4]}..."
            )
        if self.in_features is None or self.num_classes is None:
            return
        self._dry_run()

    def _dry_run(self) -> None:
        m = self.template
        before = {k: b.clone() for k, b in m.named_buffers()}
        x = torch.zeros(2, self.in_features)
        y = torch.zeros(2, dtype=torch.long)
        mask = torch.ones(2, self.dropout_units) if self.takes_mask else None
        leaves = [p.detach().clone().requires_grad_() for p in m.parameters()]
        m.train()
        logits = batched.call_one(self, leaves, x, mask)
        if tuple(logits.shape) != (2, self.num_classes):
            raise ValueError(
                f"model {self.label}: forward gives logits of shape {tuple(logits.shape)} for "
                f"2 samples, expected (2, {self.num_classes}) (batch, num_classes)"
            )
        after = list(m.named_parameters())
        if [n for n, _ in after] != self.names or [tuple(p.shape) for _, p in after] != self.shapes:
            raise ValueError(
                f"model {self.label}: forward changed the module's parameters (names or "
                "shapes): create every parameter in __init__"
            )
        for k, b in m.named_buffers():
            if not torch.equal(b, before[k]):
                raise ValueError(
                    f"model {self.label}: forward updates buffer {k} (batch-norm running "
                    "statistics?): use GroupNorm or LayerNorm, whose statistics are per sample"
                )
        grads = torch.autograd.grad(
            F.cross_entropy(logits, y), leaves, allow_unused=True, materialize_grads=False
        )
        unused = [n for n, g in zip(self.names, grads, strict=True) if g is None]
        if unused:
            raise ValueError(
                f"model {self.label}: parameter(s) {unused[:3]} do not affect the output; "
                "they would be sent every round for nothing: remove them"
            )
        # weights saved for backward cancel out: activations per sample remain
        self.activation_bytes_per_sample = (_saved_bytes(self, 4) - _saved_bytes(self, 2)) // 2
        if self.fast is not None:
            self._check_fast_path(x, mask)
        else:
            self.batchable, self.eval_batchable = batched.probe(self, x, y, mask)

    def _check_fast_path(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """The registered twin must compute the module's logits (two clients that differ)."""
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            two = [torch.stack([p, p * 0.9 + 0.01]) for p in self.init(gen)]
            xs = torch.randint(0, 2, (2, *x.shape), generator=gen).to(x.dtype)
            ms = None if mask is None else torch.stack([mask, mask * 0.5])
            got = self.fast.forward(two, xs, ms)
            want = torch.stack([batched.call_one(self, [p[i] for p in two], xs[i],
                                None if ms is None else ms[i]) for i in (0, 1)])  # fmt: skip
        if (
            got.shape != want.shape
            or float((got - want).abs().max()) > 1e-4 * float(want.abs().max()) + 1e-5
        ):
            raise ValueError(
                f"model {self.label}: its registered fast path computes other logits than "
                "the module's forward: fix the fast path or unregister it"
            )


def _saved_bytes(spec: ModelSpec, n: int) -> int:
    """Bytes autograd saves for backward in one training forward of ``n`` samples."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    x = torch.zeros(n, spec.in_features)
    mask = torch.ones(n, spec.dropout_units) if spec.takes_mask else None
    leaves = [p.detach().clone().requires_grad_() for p in spec.template.parameters()]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batched.call_one(spec, leaves, x, mask)
    return saved[0]


def _in_features(module: nn.Module) -> int | None:
    v = getattr(module, "in_features", None)
    return int(v) if isinstance(v, int) else None
