"""Search spaces of query nets, and the weight-sharing supernet trained compatible with a gallery.

Two spaces behind one interface (:class:`~edgequery.spaces.base.SearchSpace`):

* ``mbv3`` - MobileNetV3 stages, once-for-all style (elastic depth, kernel, expansion,
  width, resolution): the mobile default;
* ``shufflenet`` - the Single Path One-Shot space of ShuffleNetV2 choice blocks that
  CMP-NAS searches.

Every arch has a canonical string starting with its space's name and a colon
(``mbv3:r32,w1.0,k3e4-...``), which any stage accepts wherever it takes an arch name::

    >>> space = get_space("mbv3")
    >>> arch = space.sample(np.random.default_rng(0))
    >>> str(arch)
    'mbv3:r28,w0.75,k5e4-k3e3-k3e3-k3e3,k5e6-k5e4-k7e6-k5e4,k7e3-k7e6-k3e4,k5e3-k7e6-k7e3-k3e6,k5e3-k3e4'
    >>> trunk, dim = space.build(arch)            # a standalone, exportable net
    >>> space.blocks(arch)[2].key                  # its latency-table keys
    'mbconv|in=14x14x16|out=7x7x24|k=5|e=4|s=2|se=0|act=relu'
    >>> space.parse(str(arch)) == space.parse(arch.to_dict()) == arch
    True

The supernet lives in :mod:`~edgequery.spaces.supernet`, its training (``edgequery
train supernet``) in :mod:`~edgequery.spaces.training`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import EdgeQueryError

if TYPE_CHECKING:
    from .base import SearchSpace

    SpaceLike = str | dict[str, Any] | SearchSpace   # a space, its config() or its name

# name -> (module, class).  Imported on first use, so `edgequery --help` stays instant.
SPACES: dict[str, tuple[str, str]] = {"mbv3": ("edgequery.spaces.mbv3", "MBv3Space"),
                                      "shufflenet": ("edgequery.spaces.shufflenet", "ShuffleNetSpace")}
_LAZY = {"BlockSpec": "base", "SearchSpace": "base", "MBv3Arch": "mbv3", "MBv3Space": "mbv3",
         "ShuffleArch": "shufflenet", "ShuffleNetSpace": "shufflenet", "Supernet": "supernet",
         "recalibrate_bn": "supernet", "train_supernet": "training", "load_supernet": "training",
         "supernet_from_checkpoint": "training"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_space(name: str, **options: Any) -> "SearchSpace":
    """The search space called ``name`` (``mbv3`` or ``shufflenet``); ``options`` override its choice lists."""
    if name not in SPACES:
        raise EdgeQueryError(f"unknown search space {name!r}", f"use one of: {', '.join(SPACES)}")
    module, cls_name = SPACES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:  # an unknown option, or a value of the wrong kind
        raise EdgeQueryError(f"bad options for search space {name!r}: {exc}",
                             f"{name} takes lists of: {cls().describe()}") from None


def space_from_config(config: dict[str, Any]) -> "SearchSpace":
    """A space rebuilt from ``space.config()`` (as stored in checkpoints, LUTs and search results)."""
    if not isinstance(config, dict) or "space" not in config:
        raise EdgeQueryError(f"a search-space configuration needs a \"space\" name, got {config!r}",
                             f"store space.config(), e.g. {{\"space\": \"mbv3\", \"resolutions\": [64], ...}}")
    options = {k: v for k, v in config.items() if k != "space"}
    return get_space(config["space"], **options)


def as_space(space: SpaceLike) -> "SearchSpace":
    """A space from its name (default choices), its ``config()`` dict, or the space itself."""
    if isinstance(space, str):
        return get_space(space)
    if isinstance(space, dict):
        return space_from_config(space)
    return space


def arch_space_name(text: str | dict) -> str:
    """The space name an arch string (``mbv3:...``) or JSON dict (``{"space": "mbv3", ...}``) starts with."""
    if isinstance(text, dict):
        name = text.get("space")
        if name is None:
            raise EdgeQueryError("the JSON arch has no \"space\" field",
                                 f"add \"space\": one of {', '.join(SPACES)}")
        return name
    name, sep, _ = str(text).strip().partition(":")
    if not sep:
        prefixes = ", ".join(s + ":" for s in SPACES)
        raise EdgeQueryError(f"{text!r} is not an arch string",
                             f"arch strings start with a space name and a colon: {prefixes}")
    if name == "supernet":
        raise EdgeQueryError(f"{text!r} names a whole supernet, not one arch",
                             "pick an arch from it first (edgequery search), or pass an arch string")
    return name


def parse_arch(text: str | dict, space: SpaceLike | None = None) -> tuple["SearchSpace", Any]:
    """The space an arch string or JSON dict belongs to, and the parsed arch.

    ``space`` is the space the arch was made in (a space, its ``config()`` or its name);
    without it the arch is read in its space's *default* configuration, so an arch of a
    space configured otherwise (e.g. ``resolutions=[64]``) needs its space passed.
    """
    name = arch_space_name(text)
    if space is None:
        space = get_space(name)
    else:
        space = as_space(space)
        if space.name != name:
            raise EdgeQueryError(f"arch {str(text)[:60]!r} belongs to space {name!r}, but the {space.name} space "
                                 "was given for it", f"pass an arch of the {space.name} space, or its own space")
    return space, space.parse(text)


def build_trunk_from_string(text: str | dict, space: SpaceLike | None = None):
    """The standalone trunk (``nn.Module``) and feature dim of an arch string or JSON dict (in ``space``)."""
    space, arch = parse_arch(text, space)
    return space.build(arch)


__all__ = ["SPACES", "arch_space_name", "as_space", "build_trunk_from_string", "get_space", "parse_arch",
           "space_from_config", *_LAZY]
