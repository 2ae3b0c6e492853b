"""``python -m search.profile [overrides]``: measure a device profile of the experiment's model.

The same config groups as ``python -m search`` pick the model, data and heads; the run is
prepared (cached stages are reused) and every segment, head and call is timed on this
machine. Options go under ``+profile.``: ``entries`` (default torch/fp32, onnxruntime/fp32,
onnxruntime/int8), ``batches`` (default [1, 256]), ``repeats`` (15), ``threads`` (1),
``clock`` (``wall``, or ``cpu``: the timing thread's CPU time, for a shared machine),
``out`` (default ``<run dir>/profile.json``) and ``kit=true`` to also write the portable
profiling kit into ``<run dir>/kit``. A platform device then names the file:
``profile: {file: <out>, runtime: onnxruntime, precision: int8, batch: 1}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from search._console import terminal_console
from search.config import parse_config
from search.errors import one_line_errors

ENTRIES = ("torch/fp32", "onnxruntime/fp32", "onnxruntime/int8")


def _settings(opts: dict[str, Any]) -> Any:
    from evaluators.device_profile import ProfileError
    from search.profile import ProfileSettings

    known = ("entries", "batches", "repeats", "threads", "clock", "out", "kit")
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ProfileError(f"unknown profile key {unknown[0]!r}; use {', '.join(known)}")
    d = ProfileSettings()
    return ProfileSettings(entries=tuple(opts.get("entries", ENTRIES)),
                           batches=tuple(int(b) for b in opts.get("batches", d.batches)),
                           repeats=int(opts.get("repeats", d.repeats)),
                           threads=int(opts.get("threads", d.threads)),
                           clock=str(opts.get("clock", d.clock)))


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Prepare the experiment, measure its profile, write the file (and the kit)."""

    from evaluators.settings import plain
    from search.pipeline import prepare
    from search.profile import measure_profile
    from search.profile._subject import subject_of
    from search.profile.kit import write_kit
    from search.threads import apply_cpu_threads

    console = terminal_console()
    with one_line_errors():
        raw = dict(plain(cfg))
        opts = dict(raw.pop("profile", None) or {})
        profile_settings = _settings(opts)
        settings = parse_config(raw)
        apply_cpu_threads(settings.cpu_threads)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        subject = subject_of(prepare(settings, progress=False))
        profile = measure_profile(subject, profile_settings)
        from evaluators.device_profile import write_profile

        out = write_profile(profile, Path(opts.get("out") or run_dir / "profile.json"))
        for t in profile.tables:
            console.print(f"{t.runtime}/{t.precision} batch {t.batch:>4} ({t.threads} thread"
                          f"{'s' if t.threads > 1 else ''}): backbone "
                          f"{1e3 * t.segment_s.sum():.3f} ms/call, heads "
                          f"{1e3 * t.head_s.min():.3f}-{1e3 * t.head_s.max():.3f} ms, "
                          f"per-call {1e3 * t.call_s:.3f} ms")
        console.print(f"profile: {out}")
        if opts.get("kit"):
            kit = write_kit(subject, run_dir / "kit", int8=True)
            console.print(f"kit: {kit} (run: python3 {kit}/profile_kit.py {kit} --out "
                          "profile.json)")


PROFILE_DIR = "hydra.run.dir=results/profiles/${now:%Y-%m-%d_%H-%M-%S}"

if __name__ == "__main__":
    if not any(a.startswith("hydra.run.dir=") for a in sys.argv[1:]):
        sys.argv.append(PROFILE_DIR)
    sys.exit(main())
