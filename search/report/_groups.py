"""Which runs differ only in the seed: config diffs, groups and labels from the composed configs.

Each run's composed config (``config.yaml``, see :mod:`search.rundir`) is
flattened to dotted keys (lists stay one value). The keys whose values differ
between runs are the config diff. Runs whose values agree on every differing
key except :data:`IGNORED` (the seed, and keys that say where or how a run
computed rather than what: paths, cache, storage, Hydra, device, threads)
form one group: repeats of one configuration over seeds.

Labels name what differs: a config group whose identifying key (``name`` or
``backend``) differs is named by it (``platform=mcu_fog``, ``search=optuna_tpe``,
covering the other keys of that group, which the full diff lists); any other
differing key by its dotted path and value (``search.budget=200``). A run's
label is its group's plus ``seed=N`` when seeds differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from search.rundir import Run

__all__ = ["IGNORED", "ConfigDiff", "Grouping", "flatten", "group_runs"]

#: Keys (or key prefixes) that never separate groups; the diff still shows them.
IGNORED = ("seed", "cache_dir", "hydra", "device", "cpu_threads", "model.train.cpu_threads",
           "data.root", "data.download", "search.storage", "search.study_name")
_IDENTIFIERS = ("name", "backend")
_NAMED = ("model", "data", "platform", "search")  # describe a lone group by these
ABSENT = "(absent)"


@dataclass(frozen=True, kw_only=True)
class ConfigDiff:
    """The keys whose values differ between runs; ``values[r][k]`` is run r's text for key k."""

    keys: tuple[str, ...]
    ignored: tuple[bool, ...]  # per key: not used for grouping
    values: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, kw_only=True)
class Grouping:
    """Runs grouped by the differing keys that matter, and the labels of groups and runs."""

    diff: ConfigDiff
    group_of_run: tuple[int, ...]
    group_labels: tuple[str, ...]
    group_settings: tuple[tuple[tuple[str, str], ...], ...]  # (label key, value) per group
    run_labels: tuple[str, ...]
    seeds: tuple[int | None, ...]
    no_config: tuple[int, ...]  # runs without a readable config


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted key -> value text of a nested config (lists and scalars are leaves)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = _text(value)
    return out


def is_ignored(key: str) -> bool:
    """Whether ``key`` is one of :data:`IGNORED` or lies below one."""
    return any(key == i or key.startswith(f"{i}.") for i in IGNORED)


def config_diff(configs: Sequence[Mapping[str, Any] | None]) -> ConfigDiff:
    """The keys (in first-seen order) whose value text is not the same in every run."""
    flat = [flatten(c or {}) for c in configs]
    order: dict[str, None] = {}
    for f in flat:
        order.update(dict.fromkeys(f))
    keys = tuple(k for k in order if len({f.get(k, ABSENT) for f in flat}) > 1)
    return ConfigDiff(keys=keys, ignored=tuple(is_ignored(k) for k in keys),
                      values=tuple(tuple(f.get(k, ABSENT) for k in keys) for f in flat))


def _settings(keys: Sequence[str], values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """(label key, value) pairs: a config group by its differing identifier, else the leaf."""
    keyset = set(keys)
    out: list[tuple[str, str]] = []
    covered: set[str] = set()
    for key in keys:
        parts = key.split(".")
        ident = next((".".join(parts[:d]) for d in range(1, len(parts))
                      for name in _IDENTIFIERS if f"{'.'.join(parts[:d])}.{name}" in keyset), None)
        if ident is None:
            out.append((key, values[key]))
        elif ident not in covered:
            covered.add(ident)
            name = next(n for n in _IDENTIFIERS if f"{ident}.{n}" in keyset)
            out.append((ident, values[f"{ident}.{name}"]))
    return tuple(out)


def _lone_label(config: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """A group with nothing differing is described by its model, data, platform, search."""
    out = []
    for group in _NAMED:
        sub = (config or {}).get(group)
        if isinstance(sub, Mapping):
            name = next((sub[n] for n in _IDENTIFIERS if n in sub), None)
            if name is not None:
                out.append((group, _text(name)))
    return tuple(out)


def _join(settings: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings)


def _run_labels(runs: Sequence[Run], group_labels: Sequence[str], group_of_run: Sequence[int],
                seeds: Sequence[int | None]) -> tuple[str, ...]:
    """Group label plus seed (when seeds differ); still equal: plus the folder's name."""
    add_seed = len(set(seeds)) > 1
    labels = [", ".join(p for p in (group_labels[g], f"seed={s}" if add_seed else "") if p)
              for g, s in zip(group_of_run, seeds, strict=True)]
    for attempt in (lambda r: r.path.name, lambda r: f"{r.path.parent.name}/{r.path.name}",
                    lambda r: str(r.path)):
        if len(set(labels)) == len(labels):
            break
        dupes = {x for x in labels if labels.count(x) > 1}
        labels = [f"{x} ({attempt(r)})" if x in dupes else x
                  for x, r in zip(labels, runs, strict=True)]
    return tuple(labels)


def group_runs(runs: Sequence[Run]) -> Grouping:
    """Group runs that differ only in ignored keys (the seed among them); label groups and runs."""
    diff = config_diff([r.config for r in runs])
    kept = [k for k, ign in zip(diff.keys, diff.ignored, strict=True) if not ign]
    keyed = [dict(zip(diff.keys, v, strict=True)) for v in diff.values]
    signatures: dict[tuple[str, ...], int] = {}
    group_of_run = tuple(signatures.setdefault(tuple(kv[k] for k in kept), len(signatures))
                         for kv in keyed)
    first = {g: group_of_run.index(g) for g in range(len(signatures))}
    settings = tuple(_settings(kept, keyed[first[g]]) if kept else _lone_label(runs[0].config)
                     for g in range(len(signatures)))
    group_labels = tuple(_join(s) or "all runs (same config)" for s in settings)
    seeds = tuple(int(r.config["seed"]) if r.config and isinstance(r.config.get("seed"), int)
                  else None for r in runs)
    return Grouping(diff=diff, group_of_run=group_of_run, group_labels=group_labels,
                    group_settings=settings,
                    run_labels=_run_labels(runs, group_labels, group_of_run, seeds),
                    seeds=seeds, no_config=tuple(i for i, r in enumerate(runs) if not r.config))
