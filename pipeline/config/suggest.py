"""Command-line overrides checked against the config tree before Hydra runs: one line, with a "did you mean".

Hydra answers a typo (``federation.num_hospitlas=3``) with a hint to add the key
(``+federation.num_hospitlas=3``), which then fails elsewhere. :func:`override_problem` composes
the config the way ``python -m pipeline.run`` will (the group selections and ``+`` additions of
the command line) and names the first override whose key or group option does not exist, with the
closest existing one (:mod:`difflib`). It only refuses what Hydra would refuse: anything it does
not anticipate (a parse error, ``--config-name``, a ``+`` addition Hydra refuses, ``hydra.*``
keys) is left to Hydra's own message. :func:`exit_on_unknown_override` is the entry points' hook.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import OmegaConf

from pipeline.config.compose import CONFIG_NAME, conf_dir

# Command-line flags after which Hydra composes a different config, or none at all.
_OTHER_CONFIG = ("help", "hydra_help", "shell_completion", "config_path", "config_name", "config_dir")


def exit_on_unknown_override(argv: Sequence[str]) -> None:
    """Print ``error: ...`` on stderr and exit with status 2 when :func:`override_problem` finds one."""
    problem = override_problem(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)


def override_problem(argv: Sequence[str]) -> str | None:
    """The first unknown config key or group option in a Hydra command line (``sys.argv[1:]``), or None.

    None also when the command line is one this check leaves to Hydra (help, another config,
    an override Hydra cannot parse or compose).
    """
    overrides = _overrides(argv)
    if not overrides:
        return None
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config import paths  # noqa: F401  (registers the config's resolvers)

    if GlobalHydra.instance().is_initialized():  # inside another Hydra app: it has composed already
        return None
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            return _Checker(overrides, loader, hydra_compose).problem()
        except (HydraException, OmegaConfBaseException, ValueError):
            return None


def _overrides(argv: Sequence[str]) -> list[Any] | None:
    """Hydra's parsed overrides of ``argv``; None when Hydra should handle the command line alone."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if "--version" in argv:
        return None
    parser = get_args_parser()
    parser.error = _refuse  # type: ignore[method-assign]  (argparse would print and exit)
    try:
        args = parser.parse_args(list(argv))
        if any(getattr(args, flag, None) for flag in _OTHER_CONFIG) or args.experimental_rerun:
            return None
        return OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # noqa: BLE001  (Hydra's own parser gives the message)
        return None


def _refuse(message: str) -> None:
    raise ValueError(message)


class _Checker:
    """One command line's overrides against the configs Hydra would compose from them."""

    def __init__(self, overrides: list[Any], loader: Any, hydra_compose: Any) -> None:
        self.overrides, self.loader, self.hydra_compose = overrides, loader, hydra_compose

    def is_group(self, name: str) -> bool:
        return any(source.is_group(name) for source in self.loader.get_sources())

    def options(self, group: str) -> list[str]:
        return sorted(self.loader.get_group_options(group))

    def problem(self) -> str | None:
        selections: list[str] = []  # group selections and + additions, as Hydra applies them
        sweeps: list[tuple[str, list[str]]] = []  # group sweeps: one composition per option
        keys: list[str] = []  # plain keys that must exist
        for o in self.overrides:
            key = o.key_or_group
            if key == "hydra" or key.startswith("hydra."):
                continue
            if self.is_group(key) and not isinstance(o.value(), dict):
                if o.is_delete():
                    selections.append(o.input_line)
                    continue
                chosen = _swept_options(o) if o.is_sweep_override() else _chosen_options(o.value())
                known = self.options(key)
                for option in chosen or ():
                    if option not in known:
                        return _option_problem(key, option, known, o.package)
                if not o.is_sweep_override():
                    selections.append(o.input_line)
                elif chosen:
                    sweeps.append((key, chosen))
                else:
                    return None  # a sweep this check does not read (glob, range): Hydra judges it
            elif o.is_add() or o.is_force_add():
                if not o.is_sweep_override():
                    selections.append(o.input_line)
            else:
                keys.append(key.lstrip("~"))
        if not keys:
            return None
        variants = self.compose_variants(selections, sweeps)
        if variants is None:
            return None
        for key in keys:
            if not any(_has_key(tree, key) for tree, _ in variants):
                return self.key_problem(key, *variants[0], selections)
        return None

    def compose(self, overrides: list[str]) -> tuple[dict, dict] | None:
        """(config tree without ``hydra``, group choices) of ``overrides``; None when Hydra refuses them."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            cfg = self.hydra_compose(CONFIG_NAME, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException, ValueError):
            return None
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices, resolve=False)
        tree = OmegaConf.to_container(cfg, resolve=False)
        tree.pop("hydra", None)
        return tree, choices

    def compose_variants(
        self, selections: list[str], sweeps: list[tuple[str, list[str]]]
    ) -> list[tuple[dict, dict]] | None:
        """The command line's config, and one more for each further option of a swept group."""
        base = [f"{group}={options[0]}" for group, options in sweeps]
        runs = [selections + base]
        for i, (group, options) in enumerate(sweeps):
            runs += [selections + base[:i] + [f"{group}={option}"] + base[i + 1 :] for option in options[1:]]
        variants = [self.compose(run) for run in runs]
        return None if any(v is None for v in variants) else variants  # type: ignore[return-value]

    def key_problem(self, key: str, tree: dict, choices: dict, selections: list[str]) -> str:
        """The message for ``key``, absent from ``tree``: the closest key, or the group options that have it."""
        group = key.split(".")[0]
        if self.is_group(group):
            current = choices.get(group)
            holders = []
            for option in self.options(group):
                if option == current:
                    continue
                other = self.compose([*selections, f"{group}={option}"])
                if other is not None and _has_key(other[0], key):
                    holders.append(f"{group}={option}")
            if holders:
                now = f" with {group}={current}" if current else ""
                return (
                    f"unknown config key {key}{now} (it is a key of {', '.join(holders)}: "
                    f"add {holders[0]} to the command line)"
                )
        close = difflib.get_close_matches(key, list(_dotted_keys(tree)), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"no similar key; +{key}=... adds a new one"
        return f"unknown config key {key} ({hint})"


def _chosen_options(value: Any) -> list[str] | None:
    """The option names a group override selects (a name or a list of names); None for null or others."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _swept_options(override: Any) -> list[str] | None:
    """The options of a group sweep ``model=cnn,resnet18``; None for sweeps this check does not read."""
    from hydra.core.override_parser.types import ChoiceSweep

    sweep = override.value()
    if not isinstance(sweep, ChoiceSweep) or not all(isinstance(v, str) for v in sweep.list):
        return None
    return list(sweep.list)


def _option_problem(group: str, option: str, known: list[str], package: str | None) -> str:
    close = difflib.get_close_matches(option, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    where = f"conf/{group}/" if (conf_dir() / group).is_dir() else group
    name = f"{group}@{package}" if package else group
    return f"{name}={option} is not an option of {where} ({hint}options: {', '.join(known)})"


def _has_key(tree: Any, key: str) -> bool:
    """Whether dotted ``key`` names a node of ``tree``; True where the path passes a value Hydra must judge."""
    node = tree
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif isinstance(node, list):
            if not (part.isdigit() and int(part) < len(node)):
                return False
            node = node[int(part)]
        else:  # an interpolation, null or a value on the way: Hydra decides
            return True
    return True


def _dotted_keys(tree: dict, prefix: str = "") -> Iterator[str]:
    """Every dotted key of ``tree``, inner nodes included."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        yield name
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{name}.")
