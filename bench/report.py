#!/usr/bin/env python3
"""bench/report.py: turn a bench/run results file into a Markdown report with SVG charts.

    bench/report.py RESULTS.json --out DIR

writes DIR/report.md and DIR/charts/*.svg (gnuplot, `set terminal svg`; Debian's gnuplot-nox).
Every section is optional: results from an older bench/run, a --quick run or a subset of
scenarios give a shorter report, never an error. Without gnuplot the report has no charts and
says so. Python 3 standard library only.
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PCTS = ["p50", "p90", "p99", "p99_9", "p99_99"]
ADDED = ["p50", "p99", "p99_9"]
# the x position of a percentile on the "nines" axis: 1 / (1 - q)
NINES = {"p50": 2, "p90": 10, "p99": 100, "p99_9": 1000, "p99_99": 10000}
BASELINES = ["direct", "nginx"]
COLORS = {"static": "#8c8c8c", "direct": "#333333", "nginx": "#2ca02c", "penstock": "#1f77b4"}
MORE_COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
# top-level keys that the header reads, or that repeat figures shown elsewhere; any key that is
# neither here nor in Report.SECTIONS gets the generic rendering
HEADER_KEYS = {"schema", "started", "finished", "duration_s", "commit", "host", "pinning",
               "layout", "options", "loadgen_features", "timing", "notes", "problems",
               "warnings", "runs", "rss_start_kib", "scenarios", "summary"}

# ---- small helpers ---------------------------------------------------------------------------

def num(v):
    """v as a float when it is a finite number, else None (missing, null, text, NaN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def get(obj, *path):
    """obj[path[0]][path[1]]... or None when any step is missing or of the wrong kind."""
    for key in path:
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


def dicts(obj):
    return obj if isinstance(obj, dict) else {}


def lst(obj):
    return obj if isinstance(obj, list) else []


def fmt_count(v):
    v = num(v)
    return "–" if v is None else f"{v:,.0f}"


def fmt_us(v, signed=False):
    v = num(v)
    if v is None:
        return "–"
    sign = "+" if signed else ""
    return f"{v:{sign},.1f}" if abs(v) < 100 else f"{v:{sign},.0f}"


def fmt_ratio(v):
    v = num(v)
    return "–" if v is None else f"{v:.2f}x"


def fmt_pct(v):
    v = num(v)
    return "–" if v is None else f"{v:.0%}"


def fmt_value(v):
    """Any leaf value, for the generic tables."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    n = num(v)
    if n is not None:
        if n == int(n) and abs(n) < 1e15:
            return f"{int(n):,}"
        return f"{n:,.3f}".rstrip("0").rstrip(".") if abs(n) < 1000 else f"{n:,.0f}"
    if v is None:
        return "–"
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return ", ".join(fmt_value(x) for x in v)
    return str(v)


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(headers, rows, align=None):
    """A Markdown table; numbers right-aligned unless align says otherwise ('l' or 'r' each)."""
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def label(key):
    """A JSON key as a reader would say it: p99_9 -> p99.9, throughput_rps -> throughput rps."""
    key = str(key)
    if key.startswith("p") and key[1:].replace("_", "").isdigit():
        return key.replace("_", ".")
    return key.replace("_", " ")


def order_targets(names):
    """Baselines first, as bench/run orders them; then the rest in their own order."""
    known = ["static", "direct", "nginx", "penstock"]
    return [t for t in known if t in names] + [t for t in names if t not in known]


def cpu_list(v):
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "–"
    return fmt_value(v)


def fmt_mib(kib):
    kib = num(kib)
    return "–" if kib is None else f"{kib / 1024:,.1f}"


def fmt_bytes(v):
    v = num(v)
    if v is None:
        return "–"
    return f"{v:,.0f} B" if abs(v) < 10240 else f"{v / 1024:,.1f} KiB"


def sustained_text(v):
    return "yes" if v is True else "**no**" if v is False else "–"


def errors_of(s):
    return fmt_count((num(get(s, "errors")) or 0) + (num(get(s, "non_2xx")) or 0))


def color(target, others):
    if target in COLORS:
        return COLORS[target]
    if target not in others:
        others.append(target)
    return MORE_COLORS[others.index(target) % len(MORE_COLORS)]


# ---- charts ----------------------------------------------------------------------------------

class Charts:
    """Writes gnuplot scripts and data to a temp dir and renders SVGs into DIR/charts/."""

    def __init__(self, out_dir, enabled, keep_sources=False):
        self.dir = out_dir / "charts"
        self.gnuplot = shutil.which("gnuplot") if enabled else None
        self.keep = keep_sources
        self.tmp = None
        if self.gnuplot and keep_sources:
            self.tmp = self.dir / "src"
            self.tmp.mkdir(parents=True, exist_ok=True)
        elif self.gnuplot:
            self.tmp = Path(tempfile.mkdtemp(prefix="penstock-report-"))
        self.enabled = enabled
        self.failures = []
        self.extra_colors = []
        if self.gnuplot:
            self.dir.mkdir(parents=True, exist_ok=True)
            for old in self.dir.glob("*.svg"):  # a chart left from an earlier report
                old.unlink()

    def close(self):
        if self.tmp and not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def color(self, target):
        return color(target, self.extra_colors)

    def data(self, name, rows):
        """Tab-separated data file; None becomes '?', which gnuplot treats as missing."""
        path = self.tmp / f"{name}.dat"
        lines = ["\t".join("?" if v is None else str(v) for v in row) for row in rows]
        path.write_text("\n".join(lines) + "\n")
        return path

    def render(self, name, title, body):
        """Run one gnuplot script; returns the chart's path relative to the report, or None."""
        if not self.gnuplot:
            return None
        svg = self.dir / f"{name}.svg"
        script = "\n".join([
            'set terminal svg size 880,460 dynamic noenhanced font "sans,12" '
            'background rgb "white"',
            "set encoding utf8",
            f"set output {gp_str(svg)}",
            f"set title {gp_str(title)}",
            'set datafile separator "\\t"',
            'set datafile missing "?"',
            "set grid",
            "set border 3",
            "set tics nomirror",
        ] + body) + "\n"
        path = self.tmp / f"{name}.gp"
        path.write_text(script)
        try:
            r = subprocess.run([self.gnuplot, str(path)], capture_output=True, text=True,
                               timeout=60)
            ok = r.returncode == 0 and svg.exists() and svg.stat().st_size > 0
            why = (r.stderr or "").strip().splitlines()[-1:] if not ok else []
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, why = False, [str(e)]
        if not ok:
            self.failures.append((name, " ".join(why) or "gnuplot failed"))
            svg.unlink(missing_ok=True)
            return None
        return f"charts/{svg.name}"


def gp_str(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def bar_chart(charts, name, title, ylabel, groups, series):
    """Clustered bars: groups is [(group label, {series: value})], series the bar order."""
    if not charts.gnuplot or not groups or not series:
        return None
    rows = [[g.replace("\t", " ")] + [num(vals.get(s)) for s in series] for g, vals in groups]
    data = charts.data(name, rows)
    n = len(series)
    plots = []
    for i, s in enumerate(series):
        col = i + 2
        src = gp_str(data) if i == 0 else "''"
        plots.append(f"{src} using {col}:xtic(1) title {gp_str(s)} "
                     f"lc rgb {gp_str(charts.color(s))}")
    for i in range(n):
        col = i + 2
        # bar i of n in a cluster of width n + gap (gap 1) sits this far from the cluster centre
        shift = (i - (n - 1) / 2) / (n + 1)
        plots.append(f"'' using ($0+{shift:.4f}):{col}:(short(${col})) with labels "
                     "offset 0,0.7 font \",9\" notitle")
    body = [
        "short(v) = v >= 1e6 ? sprintf('%.1fM', v/1e6) : "
        "v >= 1e4 ? sprintf('%.0fk', v/1e3) : sprintf('%.0f', v)",
        "set style data histograms",
        "set style histogram clustered gap 1",
        "set style fill solid 0.85 border -1",
        "set boxwidth 0.95",
        "set grid noxtics ytics",
        "set yrange [0:*]",
        "set offsets 0, 0, graph 0.08, 0",
        "set key below horizontal",
        "set xtics scale 0",
        f"set ylabel {gp_str(ylabel)}",
        "set format y '%.0s%c'",
        "plot " + ", \\\n     ".join(plots),
    ]
    return charts.render(name, title, body)


def line_chart(charts, name, title, xlabel, ylabel, lines, logx=False, logy=False,
               xtics=None, hlines=()):
    """lines: [(title, target for colour, dash type, [(x, y)])]; points with y <= 0 on a log
    axis are left out. hlines: [(y, title)] drawn as grey dashed levels."""
    if not charts.gnuplot:
        return None
    plots = []
    for i, (ltitle, target, dash, points) in enumerate(lines):
        pts = [(x, y) for x, y in points if num(x) is not None and num(y) is not None
               and (not logy or y > 0) and (not logx or x > 0)]
        if not pts:
            continue
        data = charts.data(f"{name}-{i}", sorted(pts))
        plots.append(f"{gp_str(data)} using 1:2 with linespoints title {gp_str(ltitle)} "
                     f"lc rgb {gp_str(charts.color(target))} dt {dash} lw 2 pt 7 ps 0.6")
    if not plots:
        return None
    plots += [f"{y} with lines dt 2 lw 1 lc rgb '#999999' title {gp_str(t)}" for y, t in hlines]
    body = [f"set xlabel {gp_str(xlabel)}", f"set ylabel {gp_str(ylabel)}",
            "set key top left"]
    if logx:
        body.append("set logscale x 10")
    if logy:
        body += ["set logscale y 10", "set format y '%g'"]
    else:
        body.append("set yrange [0:*]")
    if xtics:
        body.append("set xtics (" + ", ".join(f"{gp_str(t)} {x}" for t, x in xtics) + ")")
        xs = [x for _, x in xtics]
        body.append(f"set xrange [{min(xs) * 0.8}:{max(xs) * 1.25}]")
    body.append("plot " + ", \\\n     ".join(plots))
    return charts.render(name, title, body)


def percentile_chart(charts, name, title, per_target):
    """per_target: {target: {p50: us, ...}} on the nines axis, both axes logarithmic."""
    lines = [(t, t, 1, [(NINES[p], num(pcts.get(p))) for p in PCTS])
             for t, pcts in per_target.items() if isinstance(pcts, dict)]
    return line_chart(charts, name, title, "percentile", "µs", lines, logx=True, logy=True,
                      xtics=[(label(p), NINES[p]) for p in PCTS])


# ---- the report ------------------------------------------------------------------------------

class Report:
    """The Markdown text of one results file, section by section (build())."""

    def __init__(self, results, charts, source):
        self.r = results
        self.charts = charts
        self.source = source
        self.md = []
        self.skipped = []

    def add(self, *lines):
        self.md.extend(lines)

    def chart(self, path, alt):
        if path:
            self.add(f"![{alt}]({path})", "")

    def section(self, fn, *args):
        """One section; a section that cannot be rendered is named in the report, not fatal."""
        mark = len(self.md)
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 (a malformed section must not cost the others)
            del self.md[mark:]
            what = f"{fn.__name__.removeprefix('render_')} {' '.join(map(str, args))}".strip()
            self.skipped.append(f"{what}: {type(e).__name__}: {e}")

    # -- header

    def render_header(self):
        r = self.r
        host = dicts(r.get("host"))
        pin = dicts(r.get("pinning"))
        opts = dicts(r.get("options"))
        self.add("# penstock bench report", "")
        rows = []
        if r.get("started"):
            took = f" (took {fmt_value(r['duration_s'])} s)" if num(r.get("duration_s")) else ""
            rows.append(["started", f"{r['started']}{took}"])
        if r.get("commit"):
            rows.append(["commit", f"`{r['commit']}`"])
        if host:
            parts = []
            if host.get("cpus") is not None:
                parts.append(f"{host['cpus']} CPUs")
            for key in ("cpu_model", "kernel"):
                if host.get(key):
                    parts.append(("kernel " if key == "kernel" else "") + str(host[key]))
            extra = [f"{label(k)} {fmt_value(v)}" for k, v in host.items()
                     if k not in ("cpus", "cpu_model", "kernel")]
            rows.append(["host", ", ".join(parts + extra)])
        layout = dicts(r.get("layout"))
        if layout:
            rows.append(["CPUs", ", ".join(f"{k} {cpu_list(v)}" for k, v in layout.items())])
        elif pin:
            rows.append(["pinning", ", ".join(f"{k} on CPU {fmt_value(v)}"
                                              for k, v in pin.items())])
        if opts:
            rounds, dur, warm = opts.get("rounds"), opts.get("duration"), opts.get("warmup")
            mode = "quick (smoke test)" if opts.get("quick") else "full"
            if rounds is not None and dur is not None:
                mode += f": {rounds} round(s) × {fmt_value(dur)} s"
                if warm is not None:
                    mode += f" (+{fmt_value(warm)} s warm-up)"
                if num(opts.get("suite_duration")) is not None:
                    mode += f"; suites {fmt_value(opts['suite_duration'])} s"
                mode += "; alternating order"
            rows.append(["mode", mode])
            if opts.get("busy_poll_us") is not None:
                rows.append(["penstock", f"busy_poll_us: {opts['busy_poll_us']}"])
        rss = dicts(r.get("rss_start_kib"))
        if rss and "memory" not in r:
            rows.append(["RSS after start", ", ".join(f"{t} {fmt_mib(v)} MiB"
                                                      for t, v in rss.items())])
        if isinstance(r.get("loadgen_features"), list):
            rows.append(["loadgen features", ", ".join(map(str, r["loadgen_features"])) or
                         "none"])
        problems = r.get("problems") if isinstance(r.get("problems"), list) else []
        if "problems" in r:
            rows.append(["sanity checks", "every run passed" if not problems
                         else f"{len(problems)} problem(s), listed below"])
        timing = dicts(r.get("timing"))
        if timing:
            rows.append(["seconds per part", ", ".join(f"{k} {fmt_value(v)}"
                                                       for k, v in timing.items())])
        rows.append(["source", f"`{self.source}`"])
        self.add(*table(["", ""], rows, ["l", "l"]), "")
        if opts:
            shown = " ".join(f"{k}={v}" for k, v in opts.items() if v not in (None, False, ""))
            self.add(f"Options: `{shown}`", "")
        for title, items in (("Problems", problems), ("Notes", r.get("notes")),
                             ("Warnings", r.get("warnings"))):
            items = items if isinstance(items, list) else []
            if items:
                self.add(f"**{title}:**", "")
                self.add(*[f"- {cell(x)}" for x in items], "")

    # -- scenarios

    def scenarios(self):
        return {k: v for k, v in dicts(self.r.get("scenarios")).items() if isinstance(v, dict)}

    def render_throughput_summary(self):
        groups, series = [], []
        for name, sc in self.scenarios().items():
            if num(sc.get("rate")) not in (0, None):
                continue
            targets = dicts(sc.get("targets"))
            vals = {t: get(s, "throughput_rps") for t, s in targets.items()}
            if any(num(v) for v in vals.values()):
                groups.append((name, vals))
                series += [t for t in targets if t not in series]
        if not groups:
            return
        series = order_targets(series)
        self.add("## Throughput against the baselines", "",
                 "Closed loop (saturation), every target in the same run; the tables below "
                 "give the ratios.", "")
        self.chart(bar_chart(self.charts, "throughput", "Throughput per scenario (closed loop)",
                             "requests/s", groups, series), "throughput per scenario")

    def run_spread(self, sc_name, target):
        """Throughput of the single runs of one scenario/target: (min, max) or None."""
        vals = [num(get(run, "result", "throughput_rps")) for run in lst(self.r.get("runs"))
                if isinstance(run, dict) and run.get("scenario") == sc_name
                and run.get("target") == target]
        vals = [v for v in vals if v is not None]
        return (min(vals), max(vals)) if len(vals) > 1 else None

    def run_sum(self, sc_name, target, *path):
        vals = [num(get(run, "result", *path)) for run in lst(self.r.get("runs"))
                if isinstance(run, dict) and run.get("scenario") == sc_name
                and run.get("target") == target]
        vals = [v for v in vals if v is not None]
        return sum(vals) if vals else None

    def render_scenario(self, name):
        sc = self.scenarios()[name]
        targets = {t: s for t, s in dicts(sc.get("targets")).items() if isinstance(s, dict)}
        if not targets:
            return
        names = order_targets(list(targets))
        rate = num(sc.get("rate")) or 0
        stream = bool(sc.get("stream"))
        field = "ttfe_us" if stream else "latency_us"
        self.add(f"## {name}", "")
        if sc.get("title"):
            self.add(f"{sc['title']}.", "")
        if rate == 0:
            self.closed_loop_table(name, targets, names, stream)
        else:
            self.open_loop_tables(name, sc, targets, names, stream, field)
        if stream and rate == 0:
            self.percentile_table(targets, names, "ttfe_us", "Time to first event (µs):")
        self.percentile_table(targets, names, "event_gap_us", "Gaps between events (µs):")
        if rate == 0 or stream:
            how = ", from the actual send (closed loop)" if rate == 0 else ""
            self.percentile_table(targets, names, "latency_us",
                                  f"Latency of the whole response (µs){how}:")
        what = "time to first event" if stream else "latency"
        per_target = {t: targets[t].get(field) for t in names}
        self.chart(percentile_chart(self.charts, f"percentiles-{name}",
                                    f"{name}: {what} percentiles (µs)", per_target),
                   f"{name} {what} percentiles")

    def closed_loop_table(self, name, targets, names, stream):
        base = {b: num(get(targets, b, "throughput_rps")) for b in BASELINES}
        headers = ["target", "streams/s" if stream else "req/s", "vs direct", "vs nginx"]
        if stream:
            headers += ["events/s"]
        cpu = any(num(get(targets, t, "cpu_cores")) is not None for t in names)
        if cpu:
            headers += ["its CPU", "req per CPU-s"]
        headers += ["runs: min–max req/s", "errors + non-2xx", "loadgen CPU"]
        rows = []
        for t in names:
            s = targets[t]
            rps = num(s.get("throughput_rps"))
            row = [t, fmt_count(rps)]
            for b in BASELINES:
                row.append(fmt_ratio(rps / base[b]) if rps is not None and base[b] else "–")
            if stream:
                row.append(fmt_count(s.get("events_per_s")))
            if cpu:
                row += [fmt_pct(s.get("cpu_cores")), fmt_count(s.get("requests_per_cpu_s"))]
            spread = self.run_spread(name, t)
            row.append(f"{fmt_count(spread[0])}–{fmt_count(spread[1])}" if spread else "–")
            row.append(errors_of(s))
            row.append(fmt_pct(s.get("loadgen_cores")))
            rows.append(row)
        self.add(*table(headers, rows), "")

    def open_loop_tables(self, name, sc, targets, names, stream, field):
        what = "time to first event" if stream else "latency"
        self.add(f"{what.capitalize()} from the intended send time (µs), "
                 "coordinated omission corrected:", "")
        cpu = any(num(get(targets, t, "cpu_cores")) is not None for t in names)
        headers = ["target", "req/s", "p50", "p90", "p99", "p99.9", "p99.99", "send lag p50",
                   "never sent", "errors + non-2xx"] + (["its CPU"] if cpu else [])
        rows = []
        for t in names:
            s = targets[t]
            pcts = dicts(s.get(field))
            backlog = s.get("backlog_at_end")
            if num(backlog) is None:
                backlog = self.run_sum(name, t, "backlog_at_end")
            rows.append([t, fmt_count(s.get("throughput_rps"))]
                        + [fmt_us(pcts.get(p)) for p in PCTS]
                        + [fmt_us(s.get("send_lag_us_p50")), fmt_count(backlog), errors_of(s)]
                        + ([fmt_pct(s.get("cpu_cores"))] if cpu else []))
        self.add(*table(headers, rows), "")
        if any(get(targets, t, "sustained") is False for t in names):
            self.add("Not sustained (more than 1% of the requests never sent, or under 90% "
                     "answered): " + ", ".join(t for t in names
                                               if get(targets, t, "sustained") is False)
                     + "; their figures describe an overloaded server.", "")
        self.added_table(sc, targets, names, field, what)

    def added_table(self, sc, targets, names, field, what):
        """Added latency against each baseline: the JSON's figures, else computed the same way
        (mean percentile via the target minus mean percentile of the baseline)."""
        given = {"direct": dicts(sc.get("added_us_vs_direct")),
                 "nginx": {"penstock": dicts(sc.get("penstock_added_us_vs_nginx"))}}
        rows = []
        for t in names:
            if t in ("static", "direct"):
                continue
            row, any_value = [t], False
            for b in BASELINES:
                for p in ADDED:
                    v = num(get(given, b, t, p))
                    if v is None and t != b:
                        mine, theirs = num(get(targets, t, field, p)), \
                            num(get(targets, b, field, p))
                        v = mine - theirs if mine is not None and theirs is not None else None
                    any_value |= v is not None
                    row.append(fmt_us(v, signed=True) if t != b else "–")
            if any_value:
                rows.append(row)
        if not rows:
            return
        self.add(f"Added {what} (µs): the target's percentile minus the baseline's, "
                 "same run:", "")
        headers = ["target"] + [f"{p} vs {b}" for b in BASELINES
                                for p in ("+p50", "+p99", "+p99.9")]
        self.add(*table(headers, rows), "")

    def percentile_table(self, targets, names, field, heading):
        """heading, then a row of percentiles per target that has them; nothing if none has."""
        cols = PCTS + ["max"]
        if not any(num(get(targets, t, field, "max")) is not None for t in names):
            cols = PCTS
        rows = []
        for t in names:
            pcts = dicts(targets[t].get(field))
            if pcts:
                rows.append([t] + [fmt_us(pcts.get(p)) for p in cols])
        if rows:
            self.add(heading, "")
            self.add(*table(["target"] + [label(p) for p in cols], rows), "")

    # -- sections of schema 2 (bench/run's comment block lists their keys)

    SECTIONS = {"cpu_efficiency": "render_cpu_efficiency", "large_prompt": "render_large_prompt",
                "concurrency1": "render_concurrency1", "fixed_rate": "render_fixed_rate",
                "frontier": "render_frontier", "stream_suite": "render_stream_suite",
                "memory": "render_memory", "scaling": "render_scaling"}

    def render_goals(self):
        goals = [g for g in lst(get(self.r, "summary", "goals")) if isinstance(g, dict)]
        if not goals:
            return
        state = {True: "**reached**", False: "not reached", None: "not measured"}
        rows = [[g.get("what", g.get("id", "?")), g.get("target", "–"), fmt_value(g.get("value")),
                 state.get(g.get("reached")) if g.get("reached") in (True, False, None)
                 else fmt_value(g.get("reached"))] for g in goals]
        self.add("## Goals", "", "The figures issue 8 asks for, gateway on one core:", "")
        self.add(*table(["figure", "goal", "this run", ""], rows, ["l", "r", "r", "l"]), "")

    def render_cpu_efficiency(self):
        e = dicts(self.r.get("cpu_efficiency"))
        targets = {t: v for t, v in dicts(e.get("targets")).items() if isinstance(v, dict)}
        if not targets:
            return
        names = order_targets(list(targets))
        self.add("## CPU per request", "",
                 f"Closed loop ({e.get('source', 'throughput')} scenario): each target's own "
                 "CPU time read from /proc over the middle of the measured window (penstock; "
                 "nginx master and workers; the mock for direct, nginx for static), and the "
                 "requests it served per CPU-second. This holds even where the shared cores cap "
                 "the raw req/s.", "")
        base = num(get(targets, "nginx", "requests_per_cpu_s"))
        rows = []
        for t in names:
            v = targets[t]
            rpc = num(v.get("requests_per_cpu_s"))
            rows.append([t, fmt_count(v.get("throughput_rps")), fmt_pct(v.get("cpu_cores")),
                         fmt_count(rpc), fmt_ratio(rpc / base) if rpc and base else "–",
                         fmt_pct(v.get("mock_cpu_cores")), fmt_pct(v.get("loadgen_cores"))])
        self.add(*table(["target", "req/s", "its CPU", "req per CPU-s", "vs nginx", "mock CPU",
                         "loadgen CPU"], rows), "")
        if num(e.get("penstock_vs_nginx")) is not None:
            self.add(f"penstock serves **{fmt_ratio(e['penstock_vs_nginx'])}** the requests "
                     "per CPU-second of nginx.", "")
        shown = [t for t in names if num(targets[t].get("requests_per_cpu_s"))]
        groups = [("closed loop", {t: targets[t]["requests_per_cpu_s"] for t in shown})]
        self.chart(bar_chart(self.charts, "cpu-efficiency", "Requests per CPU-second of the "
                             "target's own processes", "requests / CPU-second", groups,
                             shown), "requests per CPU-second")

    def render_large_prompt(self):
        lp = dicts(self.r.get("large_prompt"))
        self.add("## Large prompts", "")
        size = num(lp.get("body_bytes"))
        self.add(f"Request body `{lp.get('body', '?')}`"
                 + (f", {size / 1024:,.0f} KiB" if size else "") + ".", "")
        names = lp.get("scenarios") if isinstance(lp.get("scenarios"), list) else []
        for name in names:
            if name in self.scenarios():
                self.section(self.render_scenario, name)

    def render_concurrency1(self):
        c = dicts(self.r.get("concurrency1"))
        targets = {t: v for t, v in dicts(c.get("targets")).items() if isinstance(v, dict)}
        if not targets:
            return
        names = order_targets(list(targets))
        self.add("## Concurrency 1", "",
                 f"{fmt_value(c.get('connections', 1))} connection, closed loop, zero-delay "
                 "mock: the latency one request sees with nothing else in flight.", "")
        rows = [[t, fmt_count(targets[t].get("throughput_rps"))]
                + [fmt_us(get(targets[t], "latency_us", p)) for p in PCTS + ["max"]]
                + [fmt_pct(targets[t].get("cpu_cores"))] for t in names]
        self.add(*table(["target", "req/s"] + [f"{label(p)} µs" for p in PCTS + ["max"]]
                        + ["its CPU"], rows), "")
        self.added_table(c, targets, names, "latency_us", "latency")
        self.chart(percentile_chart(self.charts, "percentiles-concurrency1",
                                    "concurrency 1: latency percentiles (µs)",
                                    {t: targets[t].get("latency_us") for t in names}),
                   "concurrency 1 latency percentiles")

    def render_fixed_rate(self):
        fr = dicts(self.r.get("fixed_rate"))
        points = [p for p in lst(fr.get("points")) if isinstance(p, dict)]
        if not points:
            return
        ref = dicts(fr.get("reference"))
        self.add("## Latency at fixed rates", "",
                 f"Open loop, {fmt_value(fr.get('connections'))} connections, latency from the "
                 "intended send time; added = the target's percentile minus direct's at the "
                 "same rate."
                 + (f" Percentages are of {ref.get('target')}'s closed-loop maximum, "
                    f"{fmt_count(ref.get('max_rps'))} req/s." if ref else ""), "")
        rows, series = [], {}
        for pt in sorted(points, key=lambda p: num(p.get("rate")) or 0):
            rate = num(pt.get("rate"))
            head = fmt_count(rate)
            try:
                plain = float(pt.get("label")) == rate  # "1000": the rate itself
            except (TypeError, ValueError):
                plain = not pt.get("label")
            if not plain:
                head += f" ({pt['label']})"
            if pt.get("source"):
                head += f" (the {pt['source']} scenario's runs)"
            targets = {t: v for t, v in dicts(pt.get("targets")).items() if isinstance(v, dict)}
            adds = dicts(pt.get("added_us_vs_direct"))
            for t in order_targets(list(targets)):
                v = targets[t]
                a = dicts(adds.get(t))
                rows.append([head, t, fmt_count(v.get("throughput_rps"))]
                            + [fmt_us(get(v, "latency_us", p)) for p in ("p50", "p99", "p99_9")]
                            + [fmt_us(a.get(p), signed=True) if a else "–"
                               for p in ("p50", "p99", "p99_9")]
                            + [fmt_pct(v.get("cpu_cores")), fmt_count(v.get("requests_per_cpu_s")),
                               sustained_text(v.get("sustained"))])
                for p, dash in (("p99", 1), ("p50", 2)):
                    series.setdefault((t, p, dash), []).append(
                        (rate, num(get(v, "latency_us", p))))
            for t, why in dicts(pt.get("skipped")).items():
                rows.append([head, t, "skipped: " + str(why)] + [""] * 9)
        self.add(*table(["rate", "target", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "+p50",
                         "+p99", "+p99.9", "its CPU", "req per CPU-s", "sustained"], rows), "")
        lines = [(f"{t} {p}", t, dash, pts) for (t, p, dash), pts in
                 sorted(series.items(), key=lambda kv: (order_targets(
                     [k[0] for k in series]).index(kv[0][0]), kv[0][2]))]
        self.chart(line_chart(self.charts, "latency-vs-rate", "Latency against offered rate "
                              "(p99 solid, p50 dashed)", "offered rate (req/s)", "µs", lines,
                              logx=True, logy=True), "latency against offered rate")

    def render_frontier(self):
        f = dicts(self.r.get("frontier"))
        targets = {t: v for t, v in dicts(f.get("targets")).items() if isinstance(v, dict)}
        if not targets:
            return
        names = order_targets(list(targets))
        ths = [fmt_value(x) for x in lst(f.get("thresholds_ms"))] or \
            sorted({k for v in targets.values() for k in dicts(v.get("p99_under_ms"))},
                   key=lambda k: num(float(k)) or 0)
        self.add("## Throughput frontier", "",
                 f"The highest open-loop rate at which p99 stays under each bound "
                 f"({fmt_value(f.get('connections'))} connections; bisection with probes of "
                 f"{fmt_value(f.get('probe_duration_s'))} s). A cell reads *passed – failed*: "
                 "the highest rate that held the bound and the lowest that did not (or the "
                 "closed-loop maximum); the frontier lies between. \"not met\": the lowest "
                 "rate tried already missed it.", "")
        rows = []
        for t in names:
            v = targets[t]
            under, res = dicts(v.get("p99_under_ms")), dicts(v.get("resolution_rps"))
            probes = [p for p in lst(v.get("probes")) if isinstance(p, dict)]
            row = [t]
            for th in ths:
                lo, r = num(under.get(th)), num(res.get(th))
                if lo is None:
                    low = min((num(p.get("rate")) for p in probes if num(p.get("rate"))),
                              default=None)
                    row.append("not met" + (f" at {fmt_count(low)}" if low else ""))
                else:
                    row.append(fmt_count(lo) + (f" – {fmt_count(lo + r)}" if r else ""))
            row += [fmt_count(v.get("max_rps")), fmt_count(len(probes))]
            rows.append(row)
        self.add(*table(["target"] + [f"p99 < {th} ms" for th in ths]
                        + ["max (closed loop)", "probes"], rows), "")
        lines = []
        for t in names:
            pts = [(num(p.get("rate")), num(p.get("p99_us")))
                   for p in lst(targets[t].get("probes")) if isinstance(p, dict)]
            lines.append((f"{t} p99", t, 1, pts))
        bounds = []
        for th in ths:
            try:
                bounds.append((float(th) * 1000, f"{th} ms"))
            except ValueError:
                pass
        self.chart(line_chart(self.charts, "frontier", "Frontier probes: p99 against offered "
                              "rate", "offered rate (req/s)", "p99 µs", lines, logy=True,
                              hlines=bounds), "frontier probes")

    def render_stream_suite(self):
        ss = dicts(self.r.get("stream_suite"))
        targets = {t: v for t, v in dicts(ss.get("targets")).items() if isinstance(v, dict)}
        self.add("## Stream suite", "")
        self.add(f"{fmt_value(ss.get('tokens'))} deltas {fmt_value(ss.get('event_interval_ms'))} "
                 f"ms apart ({fmt_value(ss.get('events_per_stream'))} events, "
                 f"{fmt_value(ss.get('stream_s'))} s a stream), open loop at "
                 f"{fmt_value(ss.get('rate'))} streams/s on {fmt_value(ss.get('connections'))} "
                 f"connections. A gap over {fmt_value(ss.get('stall_ms'))} ms is a stall.", "")
        names = order_targets(list(targets))
        if names:
            at = dicts(ss.get("added_ttfe_us_vs_direct"))
            ag = dicts(ss.get("added_gap_us_vs_direct"))
            rows = []
            for t in names:
                v = targets[t]
                rows.append([t, fmt_us(get(v, "ttfe_us", "p50")), fmt_us(get(v, "ttfe_us", "p99")),
                             fmt_us(get(at, t, "p50"), True), fmt_us(get(at, t, "p99"), True),
                             fmt_us(get(v, "event_gap_us", "p50")),
                             fmt_us(get(v, "event_gap_us", "p99")),
                             fmt_us(get(v, "event_gap_us", "max")),
                             fmt_us(get(ag, t, "p50"), True), fmt_us(get(ag, t, "p99"), True),
                             fmt_count(v.get("stalls")), fmt_count(v.get("events_lost")),
                             errors_of(v)])
            self.add(*table(["target", "first event p50 µs", "p99", "+p50", "+p99", "gap p50 µs",
                             "gap p99", "gap max", "+gap p50", "+gap p99", "stalls",
                             "events lost", "errors"], rows), "")
            self.chart(percentile_chart(self.charts, "percentiles-stream-suite",
                                        "stream suite: time to first event (µs)",
                                        {t: targets[t].get("ttfe_us") for t in names}),
                       "stream suite time to first event")
        mc = dicts(ss.get("max_concurrent"))
        mct = {t: v for t, v in dicts(mc.get("targets")).items() if isinstance(v, dict)}
        if mct:
            tn = order_targets(list(mct))
            self.add(f"Most concurrent streams (closed loop, steps of "
                     f"{fmt_value(mc.get('duration_s'))} s) with no event lost, no error and no "
                     "stall:", "")
            self.add(*table(["target"] + tn, [["max streams"] + [
                fmt_count(mct[t].get("max_streams")) for t in tn]]), "")
            steps = sorted({num(st.get("streams")) for t in tn for st in
                            lst(mct[t].get("steps")) if isinstance(st, dict)} - {None})
            rows = []
            for n in steps:
                row = [fmt_count(n)]
                for t in tn:
                    st = next((x for x in lst(mct[t].get("steps"))
                               if isinstance(x, dict) and num(x.get("streams")) == n), None)
                    if st is None:
                        row.append("–")
                    elif st.get("ok"):
                        p99 = num(st.get("latency_p99_us"))
                        row.append("ok" + (f" (stream p99 {p99 / 1000:,.0f} ms)" if p99 else ""))
                    else:
                        row.append("; ".join(map(str, st.get("reasons") or ["failed"])))
                rows.append(row)
            if rows:
                self.add(*table(["streams"] + tn, rows, ["r"] + ["l"] * len(tn)), "")

    def render_memory(self):
        m = dicts(self.r.get("memory"))
        targets = {t: v for t, v in dicts(m.get("targets")).items() if isinstance(v, dict)}
        if not targets:
            return
        names = order_targets(list(targets))
        idle, active = fmt_value(m.get("idle_connections")), fmt_value(m.get("active_connections"))
        self.add("## Memory", "",
                 f"RSS of the target's processes, MiB: after start; after a warm-up "
                 f"runs; with {idle} idle keep-alive connections; steady under load on "
                 f"{active} connections (median of the second half of a "
                 f"{fmt_value(m.get('load_duration_s'))} s run); after the load stops. "
                 "Growth is the least-squares slope of RSS over the run after its first "
                 "quarter. RSS counts the pages of mapped files the process has touched: "
                 "penstock's LMDB files (the audit trail, read through its map as it is "
                 "appended) are page cache the kernel reclaims, and they grow with the trail; "
                 "the anonymous columns (RssAnon) are the process's own memory.", "")
        rows = []
        for t in names:
            v = targets[t]
            rows.append([t, fmt_mib(v.get("rss_start_kib")), fmt_mib(v.get("rss_warm_kib")),
                         fmt_mib(v.get("rss_idle_connections_kib")),
                         fmt_bytes(v.get("bytes_per_idle_connection")),
                         fmt_mib(v.get("rss_low_load_kib")), fmt_mib(v.get("rss_steady_kib")),
                         fmt_bytes(v.get("bytes_per_active_connection")),
                         fmt_value(v.get("growth_mib_per_min")), fmt_mib(v.get("rss_after_kib")),
                         fmt_bytes(v.get("anon_bytes_per_active_connection")),
                         fmt_value(v.get("anon_growth_mib_per_min")),
                         fmt_mib(v.get("rss_anon_after_kib")),
                         fmt_count(v.get("throughput_rps"))])
        self.add(*table(["target", "start", "warm", f"+{idle} idle conns", "per idle conn",
                         "low load", "steady", "per active conn", "growth MiB/min", "after",
                         "anon per active conn", "anon growth MiB/min", "anon after",
                         "req/s under load"], rows), "")
        lines = []
        for t in names:
            tl = lst(targets[t].get("timeline"))
            pts = [(num(p[0]), num(p[1]) / 1024 if num(p[1]) is not None else None)
                   for p in tl if isinstance(p, list) and len(p) >= 2]
            lines.append((t, t, 1, pts))
        self.chart(line_chart(self.charts, "memory", "RSS during the memory run (MiB)",
                              "seconds into the measured window", "MiB", lines),
                   "RSS during the memory run")

    def render_scaling(self):
        sc = dicts(self.r.get("scaling"))
        points = sorted((p for p in lst(sc.get("points")) if isinstance(p, dict)),
                        key=lambda p: num(p.get("workers")) or 0)
        self.add("## Scaling", "",
                 f"Closed loop, {fmt_value(sc.get('connections_per_worker'))} connections per "
                 "worker; penstock `workers: N` and nginx `worker_processes N`, each worker "
                 "pinned to one CPU.", "")
        names = order_targets(list({t for p in points for t in dicts(p.get("targets"))}))
        rows = []
        for p in points:
            targets, speed = dicts(p.get("targets")), dicts(p.get("speedup"))
            row = [fmt_value(p.get("workers")), cpu_list(p.get("cpus"))]
            for t in names:
                row += [fmt_count(get(targets, t, "throughput_rps")), fmt_ratio(speed.get(t)),
                        fmt_count(get(targets, t, "requests_per_cpu_s"))]
            row += [fmt_ratio(p.get("penstock_vs_nginx")),
                    "shared with " + cpu_list(p["shared_cpus"]) if p.get("shared_cpus") else ""]
            rows.append(row)
        if rows:
            headers = ["workers", "CPUs"]
            for t in names:
                headers += [f"{t} req/s", f"{t} speedup", f"{t} req per CPU-s"]
            self.add(*table(headers + ["penstock / nginx", "note"], rows,
                            ["r", "l"] + ["r"] * (3 * len(names) + 1) + ["l"]), "")
        for sk in lst(sc.get("skipped")):
            if isinstance(sk, dict):
                self.add(f"- {fmt_value(sk.get('workers'))} workers skipped: "
                         f"{cell(sk.get('reason', '?'))}")
        if sc.get("skipped"):
            self.add("")
        if sc.get("note"):
            self.add(f"Note: {cell(sc['note'])}", "")
        lines = []
        for t in names:
            pts = [(num(p.get("workers")), num(get(p, "targets", t, "throughput_rps")))
                   for p in points]
            lines.append((t, t, 1, pts))
            one = next((y for x, y in pts if x == 1 and y), None)
            if one and len(pts) > 1:
                lines.append((f"{t} × workers", t, 3, [(x, one * x) for x, _ in pts if x]))
        if len(points) > 1:
            most = max(num(p.get("workers")) or 0 for p in points)
            self.chart(line_chart(self.charts, "scaling", "Throughput against workers "
                                  "(dotted: linear from 1 worker)", "workers", "requests/s",
                                  lines, logx=most >= 4, xtics=[(fmt_value(p.get("workers")),
                                                 num(p.get("workers"))) for p in points
                                                if num(p.get("workers"))]),
                       "scaling")

    # -- sections beyond the scenarios (added by later bench/run versions)

    def render_generic(self, key):
        """A section the report has no special layout for: its figures as tables, so that
        nothing in the results is left out of the report."""
        self.add(f"## {label(key)}", "")
        self.generic_block(self.r[key], depth=3)

    def generic_block(self, value, depth):
        if isinstance(value, dict):
            leaves = {k: v for k, v in value.items() if not isinstance(v, (dict, list))
                      or (isinstance(v, list) and all(not isinstance(x, (dict, list))
                                                      for x in v))}
            nested = {k: v for k, v in value.items() if k not in leaves}
            if leaves:
                self.add(*table(["", ""], [[label(k), fmt_value(v)] for k, v in leaves.items()],
                                ["l", "r"]), "")
            # a dict of similar dicts (per target, per rate...) reads best as one table
            if nested and all(isinstance(v, dict) for v in nested.values()) and \
                    self.try_wide_table(nested):
                return
            for k, v in nested.items():
                self.add(f"{'#' * min(depth, 6)} {label(k)}", "")
                self.generic_block(v, depth + 1)
        elif isinstance(value, list):
            rows = [v for v in value if isinstance(v, dict)]
            if rows and not self.try_wide_table({str(i): v for i, v in enumerate(rows)},
                                                index=False):
                for i, v in enumerate(rows):
                    self.add(f"{'#' * min(depth, 6)} {i + 1}", "")
                    self.generic_block(v, depth + 1)
            elif not rows:
                self.add(fmt_value(value), "")
        else:
            self.add(fmt_value(value), "")

    def try_wide_table(self, rows_by_name, index=True):
        """{name: flat dict} as one table (a column per key); False when rows are not flat."""
        flat = {}
        for name, row in rows_by_name.items():
            f = flatten(row)
            if f is None:
                return False
            flat[name] = f
        cols = []
        for f in flat.values():
            cols += [c for c in f if c not in cols]
        if not cols or len(cols) > 16:
            return False
        headers = ([""] if index else []) + [label(c) for c in cols]
        rows = [([name] if index else []) + [fmt_value(f.get(c)) for c in cols]
                for name, f in flat.items()]
        self.add(*table(headers, rows, (["l"] if index else []) + ["r"] * len(cols)), "")
        return True

    # -- the whole report

    def build(self):
        self.section(self.render_header)
        self.section(self.render_goals)
        self.section(self.render_throughput_summary)
        large = get(self.r, "large_prompt", "scenarios")
        large = large if isinstance(large, list) else []
        for name in self.scenarios():
            if name not in large:
                self.section(self.render_scenario, name)
        for key, method in self.SECTIONS.items():
            if key in self.r:
                self.section(getattr(self, method))
        for key in self.r:
            if key not in HEADER_KEYS and key not in self.SECTIONS:
                self.section(self.render_generic, key)
        self.render_footer()
        return "\n".join(self.md).rstrip() + "\n"

    def render_footer(self):
        notes = []
        if not self.charts.gnuplot:
            notes.append("no charts: gnuplot was not found (Debian: apt-get install gnuplot-nox)"
                         if self.charts.enabled else "no charts (--no-charts)")
        by_reason = {}
        for name, why in self.charts.failures:
            by_reason.setdefault(why, []).append(name)
        notes += [f"chart{'s' if len(names) > 1 else ''} {', '.join(names)}: {why}"
                  for why, names in by_reason.items()]
        notes += [f"section {s}" for s in self.skipped]
        if notes:
            self.add("## Notes on this report", "")
            self.add(*[f"- {cell(n)}" for n in notes], "")
        self.add("Method: see docs/benchmarks.md. Made by bench/report.py.")


def flatten(d, prefix=""):
    """A dict of scalars, nested dicts flattened with '.' ; None when it holds a list of
    dicts (not a flat record)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            sub = flatten(v, key + ".")
            if sub is None:
                return None
            out.update(sub)
        elif isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            return None
        else:
            out[key] = v
    return out


def main():
    ap = argparse.ArgumentParser(description="Markdown report with SVG charts from a bench/run "
                                 "results file")
    ap.add_argument("results", help="results JSON written by bench/run")
    ap.add_argument("--out", required=True, help="directory for report.md and charts/")
    ap.add_argument("--no-charts", action="store_true", help="do not call gnuplot")
    ap.add_argument("--keep-sources", action="store_true",
                    help="keep each chart's gnuplot script and data in DIR/charts/src/")
    args = ap.parse_args()
    try:
        results = json.loads(Path(args.results).read_text())
    except (OSError, ValueError) as e:
        print(f"report: cannot read {args.results}: {e}", file=sys.stderr)
        return 1
    if not isinstance(results, dict):
        print(f"report: {args.results} is not a bench/run results object", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    charts = Charts(out, not args.no_charts, args.keep_sources)
    try:
        text = Report(results, charts, args.results).build()
    finally:
        charts.close()
    (out / "report.md").write_text(text)
    print(f"report: {out / 'report.md'}"
          + (f" ({len(list(charts.dir.glob('*.svg')))} charts)" if charts.gnuplot else
             " (no charts)"))
    for name, why in charts.failures:
        print(f"report: chart {name}: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
