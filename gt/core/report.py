"""Reports under reports/: markdown tables, files written atomically, and PNG plots (a heatmap of
counts or correlations, small-multiple histograms). Every stage that writes a report uses these,
so reports look alike and a killed stage never leaves a half-written file.

Plots use matplotlib's object API (`Figure` + the Agg canvas), never pyplot: no display, no global
figure state, safe to call from tests and worker threads.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported inside the plot functions: it costs about a second, and a stage that
# only writes tables (or prints --help) should not pay it


def import_plotting() -> None:
    """Import what the plot functions need (a stage may call this early in a background thread)."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.ticker  # noqa: F401


# ---- text -------------------------------------------------------------------------------------

def fmt_cell(value: Any, floatfmt: str = ".2f", intfmt: str = "") -> str:
    """One table cell: floats with `floatfmt`, ints with `intfmt` (',' for thousands separators),
    NaN/None as an em dash, pipes escaped."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return format(value, intfmt)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return format(value, floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None,
             floatfmt: str = ".2f", intfmt: str = "") -> str:
    """A GitHub-flavoured markdown table. `align` is one letter per column (l, r, c); by default
    columns whose cells are all numbers are right-aligned."""
    headers = [str(h) for h in headers]
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells, the table has {len(headers)} columns")
    if align is None:
        align = "".join(
            "r" if rows and all(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) or r[c] is None
                                for r in rows) else "l"
            for c in range(len(headers))
        )
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} letters, the table has {len(headers)} columns")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(fmt_cell(h) for h in headers) + " |",
        "|" + "|".join(rule[a] for a in align) + "|",
    ]
    lines += ["| " + " | ".join(fmt_cell(v, floatfmt, intfmt) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pct(part: float, whole: float, digits: int = 1) -> str:
    """'12.5%' (or '—' when the whole is zero)."""
    if not whole:
        return "—"
    return f"{100.0 * part / whole:.{digits}f}%"


REPORTS_DIR = "reports"   # where a step writes its report unless told otherwise (relative to the working folder)


# ---- files ------------------------------------------------------------------------------------

def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Write through `write(tmp_path)` to a temp file beside `path`, then rename over it: readers
    see the old file or the new one, never half of one; the file gets the modes the umask gives new
    files (mkstemp makes 0600 files; what the pipeline writes is for everyone to read)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise
    return target


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, OSError)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomic(path, write, ".tmp")


def write_json_atomic(path: str | os.PathLike, obj: Any, sort_keys: bool = True) -> Path:
    """JSON (keys sorted unless `sort_keys` is False) with NaN written as null (strict JSON
    readers reject NaN)."""
    return write_text_atomic(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=sort_keys,
                                              ensure_ascii=False) + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _nan_to_none(obj.item())
    return obj


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render `fig` to a PNG at `path` (atomically) with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return write_atomic(path, write, ".png")


# ---- plots ------------------------------------------------------------------------------------

def heatmap(matrix: Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[Any], *,
            title: str = "", xlabel: str = "", ylabel: str = "", annotate: bool = True, fmt: str = "{:.0f}",
            cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
            colorbar_label: str = "", integer_colorbar: bool = False,
            path: str | os.PathLike | None = None) -> Figure:
    """A labelled heatmap (rows x columns), e.g. dimension x score counts, or a correlation
    matrix with cmap='RdBu_r', vmin=-1, vmax=1, fmt='{:.2f}'. With `integer_colorbar` (the cells
    are counts) the colour bar has whole-number ticks only. Saved to `path` when given."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    data = np.asarray(matrix, dtype=float)
    if data.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix is {data.shape}, labels are {len(row_labels)} x {len(col_labels)}")
    fig = Figure(figsize=(max(4.0, 0.55 * len(col_labels) + 2.5), max(2.5, 0.45 * len(row_labels) + 1.5)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels])
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    cbar = fig.colorbar(image, ax=ax)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    if integer_colorbar:
        cbar.locator = MaxNLocator(integer=True, nbins="auto")
        cbar.update_ticks()
    if annotate and data.size:
        finite = data[np.isfinite(data)]
        lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
        hi = vmax if vmax is not None else (finite.max() if finite.size else 1.0)
        mid = (lo + hi) / 2
        for (i, j), v in np.ndenumerate(data):
            if not np.isfinite(v):
                continue
            # dark text on light cells, light text on dark cells (viridis is light at the top)
            light_cell = v > mid if cmap == "viridis" else abs(v - mid) < (hi - lo) / 4
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="black" if light_cell else "white")
    if path is not None:
        save_figure(fig, path)
    return fig


def histograms(panels: Mapping[str, Mapping[str, Sequence[float]]], bin_labels: Sequence[Any], *,
               title: str = "", xlabel: str = "score", ylabel: str = "articles", ncols: int = 4,
               mark_empty: bool = True, path: str | os.PathLike | None = None) -> Figure:
    """Small-multiple bar histograms of pre-binned counts, one panel per key of `panels` (e.g. a
    dimension); each panel may hold several series side by side (e.g. two oracles, or the pool and
    the selection), all over the same `bin_labels`. Every panel has both axis labels and whole-number
    count ticks. With `mark_empty`, bins where every series is zero get a red x on the axis, so a gap
    is seen rather than inferred. A legend below the panels names the series (when there are several)
    and the red x (when one is drawn). Saved to `path` when given."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    if not panels:
        raise ValueError("histograms needs at least one panel")
    names = list(panels)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    x = np.arange(len(bin_labels))
    handles: dict[str, Any] = {}  # series label -> its first bar container, for the legend
    any_empty = False
    for k, name in enumerate(names):
        ax = axes[k // ncols][k % ncols]
        series = panels[name]
        width = 0.8 / max(1, len(series))
        for s, (label, counts) in enumerate(series.items()):
            if len(counts) != len(bin_labels):
                raise ValueError(f"panel '{name}', series '{label}': {len(counts)} counts for {len(bin_labels)} bins")
            bars = ax.bar(x + (s - (len(series) - 1) / 2) * width, counts, width=width, label=label,
                          color=f"C{s}")
            handles.setdefault(label, bars)
        if mark_empty:
            empty = [i for i in range(len(bin_labels)) if all(counts[i] == 0 for counts in series.values())]
            if empty:
                any_empty = True
                ax.plot(empty, [0] * len(empty), linestyle="none", marker="x", color="red", markersize=6,
                        clip_on=False, zorder=3, label="_empty")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(x, [str(b) for b in bin_labels], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
    for k in range(len(names), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    if any_empty:
        what = f"0 {ylabel}" if ylabel else "count 0"
        handles[f"empty bin ({what} in every series)" if len(handles) > 1 else f"empty bin ({what})"] = Line2D(
            [], [], linestyle="none", marker="x", color="red", markersize=6)
    if len(handles) > 1:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 4),
                   fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def follow_umask(folder: Path) -> None:
    """Give `folder` and everything in it the modes the umask gives new files and folders
    (safetensors writes the adapter 0600 through a temp file; a model is for everyone to read)."""
    umask = current_umask()
    folder.chmod(0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)
