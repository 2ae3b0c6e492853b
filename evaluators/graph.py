"""torch.fx tracing shared by candidate discovery, feature extraction and the runtime.

Every stage names a cut point by the node name that :func:`trace` gives it, so
one tracer (the default ``torch.fx`` one) is used everywhere.
"""

from __future__ import annotations

from torch import fx, nn

__all__ = ["UntraceableModelError", "trace"]


class UntraceableModelError(RuntimeError):
    """torch.fx cannot trace the model; the message names the way out."""


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode) with torch.fx's default tracer."""
    was_training = model.training
    model.eval()
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types; all mean "not traceable"
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(model).__name__}: {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
            "list exit points in model.candidates.modules (module paths) to use forward hooks instead"
        ) from err
    finally:
        model.train(was_training)
