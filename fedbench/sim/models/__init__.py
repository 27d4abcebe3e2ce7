"""Models: any ``nn.Module``, named by ``_target_`` in ``conf/model/*.yaml`` or on the
command line (``model._target_=mypkg.MyNet``), written once.

``build(cfg, in_features, num_classes, image_shape, ...)`` imports the class, checks it
is an ``nn.Module`` subclass before calling it, passes it the data's sizes it declares
(``in_features``, ``num_classes``, ``image_shape`` (C, H, W), ``vocab_size``,
``seq_len``) plus the config's own keys (an unknown key is refused), and returns the
engines' view of it, a :class:`ModelSpec`, checked before any training.

Built in (parameter counts for the default data shapes are in the README):
``mlp`` (:class:`MLP`), ``logreg`` (:class:`LogReg`), ``cnn`` (:class:`CNN`),
``femnist_cnn`` (:class:`FemnistCNN`), ``char_lstm`` (:class:`CharLSTM`),
``resnet`` (:class:`ResNet`).

A user's module: ``forward(x)`` with x (batch, in_features) one client's rows (images
flattened; reshape with ``image_shape``) returning logits (batch, num_classes). To get
dropout keyed per client (results independent of ``cohort_chunk`` and engine), set
``self.dropout`` (p) and ``self.dropout_units`` (mask width per sample) and take
``forward(x, mask=None)``: ``mask`` (batch, dropout_units) is the scaled keep-mask to
multiply in (None in evaluation). See ``spec.py`` for what holds otherwise.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from fedbench import registry
from fedbench.sim.models import stacked  # noqa: F401  (registers the fast paths)
from fedbench.sim.models.fast import FAST_PATHS, register
from fedbench.sim.models.leaf import CharLSTM, FemnistCNN
from fedbench.sim.models.nets import CNN, MLP, LogReg, Net
from fedbench.sim.models.resnet import ResNet
from fedbench.sim.models.spec import ModelSpec

__all__ = [
    "CNN",
    "DEFAULT_MEMORY_MB",
    "FAST_PATHS",
    "MLP",
    "CharLSTM",
    "FemnistCNN",
    "LogReg",
    "ModelSpec",
    "Net",
    "ResNet",
    "auto_chunk",
    "build",
    "register",
]

DATA_KEYS = ("in_features", "num_classes", "image_shape", "vocab_size", "seq_len")
# Configs written before `_target_` (stored runs' .hydra/config.yaml) name a built-in.
_BY_NAME = {
    "mlp": MLP,
    "logreg": LogReg,
    "cnn": CNN,
    "femnist_cnn": FemnistCNN,
    "char_lstm": CharLSTM,
    "resnet": ResNet,
}
# What to tell a user whose data lack a size the model needs.
_NEEDS = {"image_shape": "image data (digits, mnist5k, or an npz of images)"}


def locate(target: Any) -> type[nn.Module]:
    """The ``nn.Module`` subclass a dotted path names; ValueError otherwise (nothing is
    called)."""
    return registry.locate("model._target_", target, "an nn.Module subclass", nn.Module)


def build(
    cfg: Mapping[str, Any],
    in_features: int,
    num_classes: int,
    image_shape: tuple[int, int, int] | None = None,
    *,
    vocab_size: int | None = None,
    seq_len: int | None = None,
) -> ModelSpec:
    """The model ``cfg`` (a ``conf/model`` group) names, for this data's shape.

    ``vocab_size`` defaults to ``num_classes`` and ``seq_len`` to ``in_features`` (rows
    of character ids predicting the next one). ValueError, one line, for an unknown
    key, a target that is not an ``nn.Module``, a size the data do not provide, or a
    module the engines cannot train (``ModelSpec.check``).
    """
    cfg = dict(cfg)
    label = cfg.pop("name", None)
    target = cfg.pop("_target_", None)
    if target is None:
        if label not in _BY_NAME:
            raise ValueError(
                f"model.name={label!r} is invalid: must be one of {', '.join(_BY_NAME)} "
                "(or set model._target_=pkg.Class)"
            )
        cls: type[nn.Module] = _BY_NAME[label]
    else:
        cls = locate(target)
    label = str(label or cls.__name__)
    data = {
        "in_features": int(in_features),
        "num_classes": int(num_classes),
        "image_shape": None if image_shape is None else tuple(int(v) for v in image_shape),
        "vocab_size": int(vocab_size if vocab_size is not None else num_classes),
        "seq_len": int(seq_len if seq_len is not None else in_features),
    }
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    own = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL]
    allowed = sorted(n for n in own if n not in DATA_KEYS)
    for key in cfg:
        if key in DATA_KEYS:
            raise ValueError(f"model.{key}={cfg[key]!r} is invalid: {key} comes from the data")
        if key not in own and not takes_any:
            raise ValueError(
                f"model.{key} is not a parameter of {cls.__module__}.{cls.__qualname__}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )
    kwargs = dict(cfg)
    for key in DATA_KEYS:
        if key in own:
            if data[key] is None:
                raise ValueError(f"model={label} needs {_NEEDS.get(key, key)}")
            kwargs[key] = data[key]
    module = cls(**kwargs)
    spec = ModelSpec(
        module,
        label=label,
        factory=lambda: cls(**kwargs),
        in_features=data["in_features"],
        num_classes=data["num_classes"],
    )
    spec.check()
    return spec


# Stacked copies of the parameters per client while a chunk trains: the local model,
# its momentum buffer, the gradient, the delta and the decoded update.
PARAM_COPIES = 5
# Activation memory per sample over what autograd saves: the gradient pass and vmap's
# temporaries roughly double it.
ACTIVATION_FACTOR = 2


# Default budget of ``cohort_chunk: auto`` by device type (``cohort_memory_mb: null``). On a
# CPU a chunk whose activations outgrow the caches runs slower, not faster (small CNN,
# 10 clients: chunk 3 1.2x the loop's speed, chunk 10 0.75x); a GPU wants large chunks.
DEFAULT_MEMORY_MB = {"cpu": 64.0, "cuda": 2048.0}


def auto_chunk(
    spec: ModelSpec,
    batch_size: int,
    clients: int,
    memory_mb: float | None = None,
    device: str = "cpu",
) -> int:
    """Clients to train at once (``cohort_chunk: auto``): as many as fit ``memory_mb``
    (None: ``DEFAULT_MEMORY_MB`` of ``device``'s type).

    Per client: ``PARAM_COPIES`` stacked copies of the parameters plus a minibatch's
    activations (what autograd saves per sample, measured by ``ModelSpec.check``'s dry
    run, times ``ACTIVATION_FACTOR``). At least 1, at most ``clients``.
    """
    if memory_mb is None:
        memory_mb = DEFAULT_MEMORY_MB["cuda" if str(device).startswith("cuda") else "cpu"]
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int | float) or memory_mb <= 0:
        raise ValueError(f"cohort_memory_mb={memory_mb!r} is invalid: must be a number > 0")
    per_client = 4 * PARAM_COPIES * spec.num_params
    per_client += ACTIVATION_FACTOR * int(batch_size) * spec.activation_bytes_per_sample
    fit = math.floor(float(memory_mb) * 2**20 / max(per_client, 1))
    return max(1, min(int(clients), fit))
