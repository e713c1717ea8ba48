"""SVG plots of a benchmark run (the rows of scripts/bench's results.json), for BENCHMARKS.md.

draw(rows, out_dir) writes one SVG file per figure into out_dir and returns, for each, its file
name and a one-line description (the image's alternative text). A figure or panel without rows
in the run is left out. The report (benches/report.py) links the files above its
tables.

The files are meant to be committed: the same rows give the same bytes (a fixed hash salt for the
SVG's ids, no date in its metadata, text laid out with the font matplotlib ships) with the same
matplotlib, which scripts/bench pins (benches/plot-requirements.txt).
"""
import os

import matplotlib

matplotlib.use("svg")  # no display, and no other backend loaded
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

RUNTIMES = ["tokio-ct", "tokio-mt", "async-std", "smol"]
# One colour and one marker per runtime in every figure (the marker tells them apart where colours do
# not), solid lines; the references in black and grey, dashed and dotted.
COLOURS = {"tokio-ct": "#1f77b4", "tokio-mt": "#ff7f0e", "async-std": "#2ca02c", "smol": "#d62728"}
MARKERS = {"tokio-ct": "o", "tokio-mt": "s", "async-std": "^", "smol": "D"}
PERFTEST_STYLE = {"color": "black", "linestyle": "--", "marker": "x", "label": "perftest"}
RAW_STYLE = {"color": "0.5", "linestyle": ":", "marker": "+", "markersize": 7, "label": "raw verbs (rdma-sys)"}
ASYNC_RDMA_STYLE = {"color": "#8c564b", "linestyle": "-.", "marker": "v", "label": "async-rdma 0.5.0 (Tokio)"}

STYLE = {
    # Text stays text (half the size of glyph outlines, and searchable); the layout is measured with
    # DejaVu Sans, which matplotlib ships, so it does not depend on this machine's fonts, and a viewer
    # without it falls back to a narrower sans-serif that fits the same boxes.
    "svg.fonttype": "none",
    "svg.hashsalt": "anyrdma-bench-plots",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.color": "0.88",
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
}
PANEL_WIDTH_IN = 3.0
FIGURE_HEIGHT_IN = 3.4


def figure_width(panels):
    """Inches: room for the panels, and for the title and legend of a figure of one or two."""
    return max(PANEL_WIDTH_IN * panels + 0.6, 8.0)


LATENCY_TESTS = {
    "write_lat": "write_lat: RDMA write, spin on memory",
    "write_imm_lat": "write_imm_lat: write with immediate",
    "send_lat": "send_lat: send/recv ping-pong",
    "read_lat": "read_lat: RDMA read (whole read)",
}
MODES = {"busy": "busy polling", "event": "event mode"}


def size_name(n):
    """8 B, 4 KiB, 16 MiB: byte counts as the tables write them."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def pick(rows, impl, test, mode, runtime=None, **fields):
    """The rows of one implementation, test and mode (and runtime, and any other fields given)."""
    return [r for r in rows
            if r.get("impl") == impl and r.get("test") == test and r.get("mode") == mode
            and (runtime is None or r.get("runtime") == runtime)
            and all(r.get(k, 1) == v for k, v in fields.items())]


def series(rows, x, y):
    """(xs, ys) sorted by x, of the rows that have a value for y."""
    points = sorted((r[x], r[y]) for r in rows if r.get(y) is not None and r.get(x) is not None)
    return [p[0] for p in points], [p[1] for p in points]


def log_axis(axis, ticks=None, names=None):
    """A logarithmic axis labelled in plain numbers: at `ticks` (named by `names`) when given, else
    at 1, 2 and 5 times the powers of ten."""
    if ticks:
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(lambda v, _: (names or str)(int(round(v)))))
        axis.set_minor_locator(NullLocator())
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def size_axis(ax, sizes):
    ax.set_xscale("log", base=2)
    log_axis(ax.xaxis, sorted(sizes), size_name)
    ax.set_xlabel("message size (log scale)")


def plot_runtime(ax, xs, ys, rt, **style):
    """One runtime's line, in its colour and marker."""
    ax.plot(xs, ys, color=COLOURS[rt], marker=MARKERS[rt], **({"label": f"anyrdma {rt}"} | style))


def plot_runtimes(ax, rows, impl, test, mode, x, y, **fields):
    """One line per runtime that has rows."""
    for rt in RUNTIMES:
        xs, ys = series(pick(rows, impl, test, mode, rt, **fields), x, y)
        if xs:
            plot_runtime(ax, xs, ys, rt)


def plot_reference(ax, rows, impl, test, mode, x, y, style, **fields):
    """perftest's, raw verbs' or async-rdma's line, if the run has its rows."""
    xs, ys = series(pick(rows, impl, test, mode, **fields), x, y)
    if xs:
        ax.plot(xs, ys, **style)


def figure(panels, title):
    """A row of `panels` axes sharing the y axis, with the figure's title."""
    fig, axes = plt.subplots(1, panels, figsize=(figure_width(panels), FIGURE_HEIGHT_IN),
                             sharey=True, squeeze=False, layout="constrained")
    fig.suptitle(title, fontsize=10.5)
    return fig, list(axes[0])


def legend(fig, axes, extra=()):
    """One legend for the whole figure, below the panels: every label once, runtimes first."""
    seen = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    order = [f"anyrdma {rt}" for rt in RUNTIMES] + ["perftest", "raw verbs", "async-rdma"]
    labels = sorted(seen, key=lambda l: next((i for i, o in enumerate(order) if l.startswith(o)), len(order)))
    handles = [seen[l] for l in labels] + [h for h, _ in extra]
    labels += [l for _, l in extra]
    # As many entries per line as fit the figure's width (measured), spread evenly over the lines.
    fits = 1
    for ncol in range(len(labels), 1, -1):
        trial = fig.legend(handles, labels, ncol=ncol)
        wide = trial.get_window_extent().width
        trial.remove()
        if wide <= 0.98 * fig.bbox.width:
            fits = ncol
            break
    lines = -(-len(labels) // fits)
    fig.legend(handles, labels, loc="outside lower center", ncol=-(-len(labels) // lines))


def save(fig, out_dir, name):
    fig.savefig(os.path.join(out_dir, name), format="svg", metadata={"Date": None})
    plt.close(fig)


def latency_figure(rows, mode, out_dir):
    """Median latency against message size, one panel per test of `mode`, with perftest, the raw
    verbs loop and async-rdma where the run has them."""
    tests = [t for t in LATENCY_TESTS if pick(rows, "anyrdma", t, mode)]
    if not tests:
        return None
    fig, axes = figure(len(tests), f"Latency against message size, {MODES[mode]}: median, one-way "
                                   f"(half the round trip)")
    for ax, test in zip(axes, tests):
        plot_runtimes(ax, rows, "anyrdma", test, mode, "size", "median_us")
        plot_reference(ax, rows, "perftest", test, mode, "size", "median_us", PERFTEST_STYLE)
        plot_reference(ax, rows, "raw", test, mode, "size", "median_us", RAW_STYLE)
        plot_reference(ax, rows, "async-rdma", test, mode, "size", "median_us", ASYNC_RDMA_STYLE)
        ax.set_title(LATENCY_TESTS[test])
        size_axis(ax, {r["size"] for r in rows if r.get("test") == test and r.get("mode") == mode})
    axes[0].set_yscale("log")
    log_axis(axes[0].yaxis)
    axes[0].set_ylabel("one-way latency (µs, log scale)")
    legend(fig, axes)
    name = f"latency-{mode}.svg"
    save(fig, out_dir, name)
    return name, f"Median one-way latency against message size, {MODES[mode]}, every runtime, perftest and raw verbs"


def rate_figure(rows, out_dir, tests, size, name, title, what):
    """Message rate of `size`-byte messages against the number of queue pairs, one panel per test and
    mode; batch 16 (one doorbell per 16 work requests) as dashed lines with open markers."""
    panels = [(t, m) for t in tests for m in MODES if pick(rows, "anyrdma", t, m, size=size)]
    if not panels:
        return None
    fig, axes = figure(len(panels), title)
    batches = sorted({r.get("batch", 1) for t, m in panels for r in pick(rows, "anyrdma", t, m, size=size)})
    for ax, (test, mode) in zip(axes, panels):
        for batch in batches:
            for rt in RUNTIMES:
                xs, ys = series(pick(rows, "anyrdma", test, mode, rt, size=size, batch=batch), "qps", "mmsg_s")
                if not xs:
                    continue
                if batch == 1:
                    plot_runtime(ax, xs, ys, rt)
                else:
                    plot_runtime(ax, xs, ys, rt, label=None, linestyle="--", markerfacecolor="white")
        plot_reference(ax, rows, "perftest", test, mode, "qps", "mmsg_s", PERFTEST_STYLE, size=size)
        ax.set_title(f"{test}, {MODES[mode]}")
        ax.set_xscale("log", base=2)
        qps = sorted({r.get("qps", 1) for r in rows if r.get("test") == test and r.get("size") == size})
        log_axis(ax.xaxis, qps)
        ax.set_xlim(min(qps) / 1.5, max(qps) * 1.5)
        ax.set_xlabel("queue pairs (log scale)")
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel("message rate (Mmsg/s)")
    extra = []
    if len(batches) > 1:
        extra = [(Line2D([], [], color="0.3", linestyle="--", marker="o", markerfacecolor="white"),
                  f"anyrdma, batch {max(batches)} (one doorbell)")]
    legend(fig, axes, extra)
    save(fig, out_dir, name)
    return name, what


def messaging_figure(rows, out_dir):
    """The messenger's bandwidth (one sender) against message size, per mode, with perftest's RDMA
    write bandwidth on one queue pair as the reference."""
    modes = [m for m in MODES if pick(rows, "anyrdma", "msg_rate", m, senders=1)]
    if not modes:
        return None
    fig, axes = figure(len(modes), "Messaging (anyrdma::msg) bandwidth against message size: one sender, "
                                   "one queue pair")
    perftest = dict(PERFTEST_STYLE, label="perftest ib_write_bw, 1 QP")
    for ax, mode in zip(axes, modes):
        plot_runtimes(ax, rows, "anyrdma", "msg_rate", mode, "size", "mb_s", senders=1)
        plot_reference(ax, rows, "perftest", "write_rate", "busy", "size", "mb_s", perftest, qps=1)
        ax.set_title(f"Messenger send/recv, {MODES[mode]}")
        size_axis(ax, {r["size"] for r in rows if r.get("test") == "msg_rate"}
                  | {r["size"] for r in pick(rows, "perftest", "write_rate", "busy", qps=1)})
    axes[0].set_yscale("log")
    log_axis(axes[0].yaxis)
    axes[0].set_ylabel("bandwidth (MB/s, log scale)")
    legend(fig, axes)
    name = "messaging.svg"
    save(fig, out_dir, name)
    return name, "Messenger bandwidth against message size, busy and event mode, against perftest's ib_write_bw"


def streams_figure(rows, out_dir):
    """Byte streams against the messenger over rdma_cm (and TCP on the guest's loopback, for
    orientation): bandwidth of large writes and the small request/response round trip, as bars per
    runtime and mode (the run has one size of each)."""
    def value(test, rt, mode, field):
        found = pick(rows, "anyrdma", test, mode, rt)
        return found[0][field] if found and found[0].get(field) is not None else None

    groups = [(rt, m) for rt in RUNTIMES for m in MODES if pick(rows, "anyrdma", "stream_bw", m, rt)
              or pick(rows, "anyrdma", "stream_lat", m, rt)]
    if not groups:
        return None
    bw_size = next((r["size"] for r in rows if r.get("test") == "stream_bw"), 1 << 20)
    lat_size = next((r["size"] for r in rows if r.get("test") == "stream_lat"), 64)
    panels = [
        ("mb_s", f"Bandwidth, {size_name(bw_size)} writes", "bandwidth (MB/s)", [
            ("stream_bw", "stream write_all"), ("stream_owned_bw", "stream write_owned (zero-copy)"),
            ("cm_msg_bw", "messenger (rdma_cm)"), ("tcp_bw", "TCP loopback, orientation only")]),
        ("median_us", f"{size_name(lat_size)} request/response: median", "half the round trip (µs)", [
            ("stream_lat", "stream write_all"), ("cm_msg_lat", "messenger (rdma_cm)"),
            ("tcp_lat", "TCP loopback, orientation only")]),
    ]
    shades = {"stream write_all": "#4c72b0", "stream write_owned (zero-copy)": "#8fb0de",
              "messenger (rdma_cm)": "#dd8452", "TCP loopback, orientation only": "0.75"}
    fig, axes = plt.subplots(1, 2, figsize=(2 * PANEL_WIDTH_IN * 1.5 + 0.6, FIGURE_HEIGHT_IN + 0.3),
                             squeeze=False, layout="constrained")
    axes = list(axes[0])
    fig.suptitle("Byte streams (anyrdma::stream) and the messenger they are built on, both over rdma_cm; "
                 "TCP on the guest's loopback", fontsize=10.5)
    # The modes of one runtime side by side, a gap between runtimes; the runtime's name below its pair.
    runtimes = [rt for rt in RUNTIMES if any(g[0] == rt for g in groups)]
    at = [runtimes.index(rt) * (len(MODES) + 0.6) + list(MODES).index(mode) for rt, mode in groups]
    for ax, (field, title, ylabel, kinds) in zip(axes, panels):
        kinds = [k for k in kinds if any(value(k[0], rt, m, field) is not None for rt, m in groups)]
        width = 0.8 / max(len(kinds), 1)
        for i, (test, label) in enumerate(kinds):
            xs, ys = [], []
            for x, (rt, mode) in zip(at, groups):
                # TCP has no poll mode: the bench records its rows as event mode, so they stand there.
                v = value(test, rt, mode, field)
                if v is not None:
                    xs.append(x + (i - (len(kinds) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width=width, color=shades[label], label=label,
                   hatch="//" if test.startswith("tcp") else None, edgecolor="white", linewidth=0.4)
        ax.set_xticks(at, [mode for _, mode in groups], fontsize=8)
        names = ax.secondary_xaxis("bottom")
        names.set_xticks([sum(x for x, g in zip(at, groups) if g[0] == rt) / sum(1 for g in groups if g[0] == rt)
                          for rt in runtimes], runtimes)
        names.tick_params(length=0, pad=18)
        names.spines["bottom"].set_visible(False)
        ax.grid(axis="x", visible=False)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    legend(fig, axes)
    name = "streams.svg"
    save(fig, out_dir, name)
    return name, "Byte stream bandwidth and round trip against the messenger over rdma_cm, per runtime and mode"


def datagrams_figure(rows, out_dir):
    """Datagrams (UD): latency against size and message rate against queue pairs, per mode, with
    perftest -c UD."""
    lat_modes = [m for m in MODES if pick(rows, "anyrdma", "ud_send_lat", m)]
    rate_modes = [m for m in MODES if pick(rows, "anyrdma", "ud_send_rate", m)]
    if not lat_modes and not rate_modes:
        return None
    fig, axes = plt.subplots(1, len(lat_modes) + len(rate_modes),
                             figsize=(figure_width(len(lat_modes) + len(rate_modes)), FIGURE_HEIGHT_IN),
                             squeeze=False, layout="constrained")
    axes = list(axes[0])
    fig.suptitle("Datagrams (anyrdma::ud) against perftest -c UD: latency (median, one-way) and 64 B message rate",
                 fontsize=10.5)
    lat_axes, rate_axes = axes[:len(lat_modes)], axes[len(lat_modes):]
    for ax, mode in zip(lat_axes, lat_modes):
        plot_runtimes(ax, rows, "anyrdma", "ud_send_lat", mode, "size", "median_us")
        plot_reference(ax, rows, "perftest", "ud_send_lat", mode, "size", "median_us", PERFTEST_STYLE)
        ax.set_title(f"ud_send_lat, {MODES[mode]}")
        size_axis(ax, {r["size"] for r in rows if r.get("test") == "ud_send_lat"})
        ax.set_yscale("log")
        log_axis(ax.yaxis)
    if lat_axes:
        # Busy and event latencies differ tenfold: each panel has its own scale, labelled once.
        lat_axes[0].set_ylabel("one-way latency (µs, log scale)")
    for ax, mode in zip(rate_axes, rate_modes):
        plot_runtimes(ax, rows, "anyrdma", "ud_send_rate", mode, "qps", "mmsg_s")
        plot_reference(ax, rows, "perftest", "ud_send_rate", mode, "qps", "mmsg_s", PERFTEST_STYLE)
        ax.set_title(f"ud_send_rate, {MODES[mode]}")
        ax.set_xscale("log", base=2)
        qps = sorted({r.get("qps", 1) for r in rows if r.get("test") == "ud_send_rate"})
        log_axis(ax.xaxis, qps)
        ax.set_xlim(min(qps) / 1.5, max(qps) * 1.5)
        ax.set_xlabel("queue pairs (log scale)")
        ax.set_ylim(bottom=0)
    if rate_axes:
        rate_axes[0].set_ylabel("message rate (Mmsg/s)")
        for ax in rate_axes[1:]:
            ax.sharey(rate_axes[0])
    legend(fig, axes)
    name = "datagrams.svg"
    save(fig, out_dir, name)
    return name, "Datagram latency against size and message rate against queue pairs, against perftest -c UD"


def draw(rows, out_dir):
    """Writes every figure the rows allow into out_dir; returns [(file name, description)]."""
    os.makedirs(out_dir, exist_ok=True)
    with plt.rc_context(STYLE):
        drawn = [
            latency_figure(rows, "busy", out_dir),
            latency_figure(rows, "event", out_dir),
            rate_figure(rows, out_dir, ("write_rate", "send_rate"), 64, "message-rate.svg",
                        "Message rate against queue pairs: 64 B, 128 work requests in flight per queue pair, "
                        "one task",
                        "64 B message rate against the number of queue pairs, busy and event mode, against perftest"),
            messaging_figure(rows, out_dir),
            streams_figure(rows, out_dir),
            datagrams_figure(rows, out_dir),
        ]
    return [d for d in drawn if d]
