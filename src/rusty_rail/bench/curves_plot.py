"""`bench curves --plot FILE`: a curve's result as a PNG (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'rusty-rail[plot]' (or: pip install matplotlib)"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    matplotlib.use("Agg")  # no screen: draw to a file
    import matplotlib.pyplot as plt

    return plt


def _title(result: dict[str, Any]) -> str:
    machine = result["machine"]
    return (
        f"bench curves --curve {result['curve']}\n{machine['cpus']} CPUs, load average "
        f"{machine['load_average_before']}-{machine['load_average_after']} (shared machine)"
    )


def _packet(ax: Any, result: dict[str, Any]) -> None:
    rows, x = result["points"], result["x"]
    xs = [row[x] for row in rows]
    ax.plot(xs, [row["established_ns"] for row in rows], "o-", label="established flow")
    if all("new_flow_ns" in row for row in rows):
        ax.plot(xs, [row["new_flow_ns"] for row in rows], "s-", label="new flow every packet")
    ax.plot(xs, [row["floor_ns"] for row in rows], "k--", label="floor (XDP_TX), same run")
    ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("ns per packet (median, BPF_PROG_TEST_RUN)")
    ax.set_ylim(bottom=0)


def _maglev(axes: Any, result: dict[str, Any]) -> None:
    for ax, sweep, label in zip(
        axes, ("backends", "table_size"), ("N backends", "M slots"), strict=True
    ):
        rows = [row for row in result["points"] if row["sweep"] == sweep]
        xs = [row[sweep] for row in rows]
        ax.plot(xs, [row["build_ms"] for row in rows], "o-", label="Maglev build")
        ax.plot(xs, [row["baseline_ms"] for row in rows], "k--", label="np.sort of M uint32")
        fixed = f"M = {rows[0]['table_size']}" if sweep == "backends" and rows else ""
        if sweep == "table_size" and rows:
            fixed = f"N = {rows[0]['backends']}"
        ax.set_title(fixed)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("ms (best of 5)")
        ax.legend()


def _api(ax: Any, result: dict[str, Any]) -> None:
    rows = result["points"]
    xs = [row["backends"] for row in rows]
    ax.plot(xs, [row["p50_ms"] for row in rows], "o-", label="change to live, p50")
    ax.plot(xs, [row["p99_ms"] for row in rows], "^-", label="change to live, p99")
    ax.plot(xs, [row["baseline_noop_write_ms_p50"] for row in rows], "k--", label="no-op write")
    ax.plot(xs, [row["baseline_maglev_build_ms"] for row in rows], "k:", label="bare Maglev build")
    ax.set_xscale("log")
    ax.set_xlabel("backends of the VIP")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Draw ``result`` (run_curve's) into the PNG ``path``."""
    plt = _pyplot()
    if result["curve"] == "maglev":
        figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        _maglev(axes, result)
        figure.suptitle(_title(result), fontsize=9)
    else:
        figure, ax = plt.subplots(figsize=(7, 4.5))
        (_api if result["curve"] == "api" else _packet)(ax, result)
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(_title(result), fontsize=9)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
