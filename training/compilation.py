"""torch.compile of the training step, with what it did said out loud: graphs compiled,
graph breaks, recompilations and CUDA graphs skipped, each with its reason, and a
failure to compile named with the eager fallback it leads to."""

import logging
import time
from dataclasses import dataclass, field

import torch

from utils import one_line

# torch._dynamo is imported where it is used: it took 2.5 to 3.5 s of the 6.4 to 8.1 s that
# `train.py --help` took on a 2-core CPU, and a run that does not compile never needs it.

# Where Inductor says why it did not use CUDA graphs (a warning, off by default).
CUDAGRAPH_LOGGER = "torch._inductor.cudagraph_utils.__cudagraphs"


def is_compile_error(error: BaseException) -> bool:
    """Whether the error is Dynamo's or Inductor's (InductorError is a BackendCompilerFailed)."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(error, TorchDynamoException)


def compile_function(function, mode: str | None, backend="inductor"):
    """torch.compile with static shapes (every training step has the same). Compilation
    happens at the first call; its errors are raised there (see :class:`CompileWatch`)."""
    return torch.compile(function, mode=mode, dynamic=False, backend=backend)


class _CudagraphSkips(logging.Handler):
    """Inductor's reasons for skipping CUDA graphs, with the time each was given."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.reasons.append((record.created, one_line(record.getMessage())))


_cudagraph_skips = _CudagraphSkips()


def _listen_for_cudagraph_skips() -> None:
    logger = logging.getLogger(CUDAGRAPH_LOGGER)
    if _cudagraph_skips not in logger.handlers:
        logger.addHandler(_cudagraph_skips)
    # The logger is torch's and quiet unless TORCH_LOGS names it; a warning must reach us.
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)


def _counters():
    from torch._dynamo.utils import counters

    return counters


def _graph_breaks() -> dict[str, int]:
    return dict(_counters()["graph_break"])


@dataclass
class CompileOutcome:
    """What torch.compile did in a process since :class:`CompileWatch` started."""

    graphs: int = 0
    graph_breaks: dict[str, int] = field(default_factory=dict)
    recompilations: list[str] = field(default_factory=list)
    cudagraph_skips: int = 0
    # Inductor gives its reasons on GPUs; a graph of CPU operations is skipped silently.
    cudagraph_skip_reasons: list[str] = field(default_factory=list)
    failure: str | None = None

    def numbers(self) -> dict[str, int]:
        """The counts, as the history records them."""
        return {
            "compile_graphs": self.graphs,
            "compile_graph_breaks": sum(self.graph_breaks.values()),
            "compile_recompilations": len(self.recompilations),
            "cudagraph_skips": self.cudagraph_skips,
            "compile_failed": int(self.failure is not None),
        }

    def describe(self, cudagraphs: bool) -> list[str]:
        """Lines that say what happened, the reasons one per line."""
        if self.failure is not None:
            return [f"compile: failed ({self.failure}); the step runs eagerly (slower on a GPU)"]
        numbers = self.numbers()
        lines = [
            f"compile: {numbers['compile_graphs']} graph(s) compiled, "
            f"{numbers['compile_graph_breaks']} graph break(s), "
            f"{numbers['compile_recompilations']} recompilation(s)"
            + (
                f", CUDA graphs skipped {self.cudagraph_skips} time(s)"
                if self.cudagraph_skips
                else (", CUDA graphs in use" if cudagraphs else "")
            )
        ]
        lines += [
            f"compile: graph break ({count}x): {one_line(reason)}"
            for reason, count in self.graph_breaks.items()
        ]
        lines += [f"compile: recompiled: {one_line(r)}" for r in self.recompilations]
        lines += [f"compile: CUDA graphs skipped: {r}" for r in self.cudagraph_skip_reasons]
        return lines


class CompileWatch:
    """Counts what torch.compile does from now on. The counters are the process's own
    (torch._dynamo.utils.counters and compilation metrics); the watch reports the
    difference since it started, so an earlier compilation in the process is not counted."""

    def __init__(self) -> None:
        counters = _counters()
        self._started = time.time()
        self._graphs = counters["stats"]["unique_graphs"]
        self._cudagraph_skips = counters["inductor"]["cudagraph_skips"]
        self._breaks = _graph_breaks()
        self.failure: str | None = None
        _listen_for_cudagraph_skips()

    def failed(self, error: BaseException) -> None:
        # BackendCompilerFailed's own first line names the backend, its cause the problem.
        cause = getattr(error, "inner_exception", None) or error
        self.failure = f"{type(error).__name__}: {one_line(cause)}"

    def outcome(self) -> CompileOutcome:
        from torch._dynamo.utils import get_compilation_metrics

        counters = _counters()
        breaks = {
            reason: count - self._breaks.get(reason, 0)
            for reason, count in _graph_breaks().items()
            if count > self._breaks.get(reason, 0)
        }
        return CompileOutcome(
            graphs=counters["stats"]["unique_graphs"] - self._graphs,
            graph_breaks=breaks,
            recompilations=[
                m.recompile_reason
                for m in get_compilation_metrics()
                if m.recompile_reason and (m.start_time or 0.0) >= self._started
            ],
            cudagraph_skips=counters["inductor"]["cudagraph_skips"] - self._cudagraph_skips,
            cudagraph_skip_reasons=[r for t, r in _cudagraph_skips.reasons if t >= self._started],
            failure=self.failure,
        )
