"""Search spaces of a sweep, border checks and narrowed ranges for the next coarse-to-fine stage.

A dimension comes from a Hydra sweep override (``optimizer.lr=tag(log, interval(1e-6, 10))``, ``choice(...)``,
``range(...)``, ``0.1,0.3``) as written in ``hydra.sweeper.params``. Narrowing keeps the span of the best jobs,
widened by a margin (a factor in log space) and never beyond the searched range: a best value at the border of
its range is reported as a warning instead (the notes: "if the best value is at the edge, the range was too
small"), for the user to search beyond it.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "SearchDim",
    "border_warnings",
    "format_overrides",
    "narrow_ranges",
    "narrowed_override_string",
    "parse_search_space",
    "position_in_range",
]


@dataclass(frozen=True)
class SearchDim:
    """One hyperparameter's range: an interval (``low``/``high``, ``log``) or a list of ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[object, ...] | None = None

    @property
    def is_interval(self) -> bool:
        return self.low is not None and self.high is not None and self.choices is None

    def numeric_bounds(self) -> tuple[float, float] | None:
        """(low, high) of the interval, or of the numeric choices; None for non-numeric choices."""
        if self.is_interval:
            return float(self.low), float(self.high)  # type: ignore[arg-type]
        nums = [float(c) for c in self.choices or () if isinstance(c, int | float) and not isinstance(c, bool)]
        if len(nums) >= 2 and len(nums) == len(self.choices or ()):
            return min(nums), max(nums)
        return None

    def to_override(self) -> str:
        """This dimension as a Hydra sweep override, e.g. ``optimizer.lr=tag(log, interval(0.001, 0.1))``."""
        if self.is_interval:
            low, high = _fmt(self.low, self.integer), _fmt(self.high, self.integer)
            body = f"interval({low}, {high})"
            # Hydra's interval() is always float: an integer dimension keeps its `int` tag (the sweeper samples ints)
            tags = [t for t, on in (("log", self.log), ("int", self.integer)) if on]
            return f"{self.name}=tag({', '.join(tags)}, {body})" if tags else f"{self.name}={body}"
        choices = ", ".join(_fmt(c) if isinstance(c, int | float) else str(c) for c in self.choices or ())
        return f"{self.name}=choice({choices})"


def _fmt(value: object, integer: bool = False) -> str:
    if integer:
        return str(round(float(value)))  # type: ignore[arg-type]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    text = f"{float(value):.3g}"
    if "e" not in text and "." not in text and "inf" not in text and "nan" not in text:
        text += ".0"  # keep floats floats (interval(1, 10) would become an int range)
    return text


def parse_search_space(params: Mapping[str, object]) -> dict[str, SearchDim]:
    """Parse ``hydra.sweeper.params`` (name -> sweep text) with Hydra's override parser into dimensions.

    Fixed values (no sweep) are skipped.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    parser = OverridesParser.create()
    dims: dict[str, SearchDim] = {}
    for name, text in params.items():
        override = parser.parse_override(f"{name}={text}")
        value = override.value()
        if isinstance(value, IntervalSweep):
            log = "log" in value.tags
            integer = "int" in value.tags or (isinstance(value.start, int) and isinstance(value.end, int))
            dims[name] = SearchDim(name, float(value.start), float(value.end), log=log, integer=integer)  # type: ignore[arg-type]
        elif isinstance(value, RangeSweep):
            start, stop, step = value.start, value.stop, value.step
            count = max(0, math.ceil((float(stop) - float(start)) / float(step)))  # type: ignore[arg-type]
            dims[name] = SearchDim(name, choices=tuple(start + i * step for i in range(count)))  # type: ignore[operator]
        elif isinstance(value, ChoiceSweep):
            dims[name] = SearchDim(name, choices=tuple(value.list), log="log" in value.tags)
        elif override.is_sweep_override():  # pragma: no cover - glob sweeps only apply to config groups
            continue
    return dims


def position_in_range(dim: SearchDim, value: float) -> float | None:
    """Where ``value`` lies in the dimension's numeric range: 0 = low end, 1 = high end (log scale when log)."""
    bounds = dim.numeric_bounds()
    if bounds is None:
        return None
    low, high = bounds
    use_log = dim.log and low > 0 and value > 0
    if use_log:
        low, high, value = math.log(low), math.log(high), math.log(value)
    if high == low:
        return None
    return (value - low) / (high - low)


def border_warnings(dims: Mapping[str, SearchDim], best: Mapping[str, object], edge: float = 0.1) -> list[str]:
    """One line per hyperparameter whose best value lies in the outer ``edge`` fraction of its range.

    For choices, the smallest and the largest numeric choice count as the border.
    """
    if not 0.0 <= edge < 0.5:
        raise ValueError(f"edge must be in [0, 0.5), got {edge!r}")
    lines: list[str] = []
    for name, dim in dims.items():
        value = best.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        bounds = dim.numeric_bounds()
        pos = position_in_range(dim, float(value))
        if bounds is None or pos is None:
            continue
        if dim.choices is not None:
            at_low, at_high = float(value) == bounds[0], float(value) == bounds[1]
        else:
            at_low, at_high = pos <= edge, pos >= 1.0 - edge
        if not (at_low or at_high):
            continue
        side = "lower" if at_low else "upper"
        if dim.choices is not None:
            advice = f"add values {'below' if at_low else 'above'} {_fmt(value)} to the choices"
        else:
            advice = f"search {'below' if at_low else 'above'} {_fmt(bounds[0] if at_low else bounds[1])} too"
        lines.append(f"WARNING: best {name}={_fmt(value)} lies at the {side} border of its range "
                     f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}]: the optimum may lie outside; {advice}")
    return lines


def narrow_ranges(dims: Mapping[str, SearchDim], top: Sequence[Mapping[str, object]], margin: float = 0.1
                  ) -> dict[str, SearchDim]:
    """Ranges for the next stage: the span of the ``top`` jobs' values (best first), padded by ``margin``.

    margin: fraction of the old range's width (in log units for log dimensions) added on both sides of the span.
    The new range never leaves the searched one: nothing was measured outside it (a best value at a border is
    what :func:`border_warnings` reports). Integer dimensions stay integer (``tag(int, ...)``). Choice dimensions
    keep the choices the top jobs used.
    """
    if not top:
        raise ValueError("top must hold at least one job's parameters to narrow around")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    out: dict[str, SearchDim] = {}
    for name, dim in dims.items():
        values = [v for v in (job.get(name) for job in top) if v is not None]
        if not values:
            out[name] = dim
            continue
        if not dim.is_interval:
            kept = tuple(c for c in dim.choices or () if c in values)
            out[name] = SearchDim(name, choices=kept or dim.choices, log=dim.log)
            continue
        low, high = float(dim.low), float(dim.high)  # type: ignore[arg-type]
        nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not nums:
            out[name] = dim
            continue
        use_log = dim.log and low > 0 and min(nums) > 0
        t = math.log10 if use_log else (lambda x: x)
        width = t(high) - t(low)
        new_lo = max(t(min(nums)) - margin * width, t(low))
        new_hi = min(t(max(nums)) + margin * width, t(high))
        lo_val, hi_val = (10.0**new_lo, 10.0**new_hi) if use_log else (new_lo, new_hi)
        if dim.integer:
            lo_val, hi_val = max(math.floor(lo_val), math.ceil(low)), min(math.ceil(hi_val), math.floor(high))
        else:  # 3 significant digits, rounded inwards: what the printed override says lies inside the searched range
            lo_val, hi_val = max(float(f"{lo_val:.3g}"), low), min(float(f"{hi_val:.3g}"), high)
        if (lo_val, hi_val) == (low, high):
            out[name] = dim
            continue
        out[name] = SearchDim(name, lo_val, hi_val, log=dim.log, integer=dim.integer)
    return out


def narrowed_override_string(dims: Mapping[str, SearchDim]) -> str:
    """One shell-quoted Hydra override setting ``hydra.sweeper.params`` to the given ranges.

    e.g. ``"hydra.sweeper.params={optimizer.lr:'tag(log, interval(0.001, 0.1))'}"``: pass it after
    ``-m hparams_search=fine``. (A dict, because the keys contain dots; recorded in each job's
    ``.hydra/hydra.yaml``, so the next stage's report knows its ranges.)
    """
    if not dims:
        return ""
    items = []
    for dim in dims.values():
        name, _, value = dim.to_override().partition("=")
        items.append(f"{name}:'{value}'")
    return '"hydra.sweeper.params={' + ",".join(items) + '}"'


def format_overrides(dims: Iterable[SearchDim]) -> str:
    """A ready, shell-quoted command-line fragment: ``'optimizer.lr=tag(log, interval(0.001, 0.1))' ...``."""
    return " ".join(shlex.quote(d.to_override()) for d in dims)
