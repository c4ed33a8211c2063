"""The bench's load generator (bench/loadgen) checked against servers whose timing we know:
mockllm with an injected delay, a server of our own that stalls once, and paced event streams.
These test the instrument, not penstock: a generator that reads fast while the server is
stalled (coordinated omission) or misses a lost event would make every bench figure a lie.

Bounds are deliberately generous (this runs on a busy 2-core VM): a lower bound is what the
server makes certain (no response can beat the injected delay), an upper bound is several
times what a healthy run shows.
"""
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import harness as h

RATE = 200          # requests/s in the open-loop runs
DURATION = 2.0      # measured seconds
WARMUP = 0.5
# The histogram reports a bucket's midpoint: at most 1/256 of the value off (hdrhist.h).
HIST_PRECISION = 1.0 / 256


def loadgen_bin():
    return h.build_dir() / "bench" / "loadgen"


def workdir(env):
    d = Path(tempfile.mkdtemp(prefix="penstock-lg-"))
    env.defer(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def start_mock(env, d, *args):
    m = h.Mock(d, expect_key=None, args=args)
    env.defer(m.stop)
    return m


def run_loadgen(d, port, *args, path="/", stream_body=None):
    """Run loadgen against 127.0.0.1:port, return its --json document."""
    assert loadgen_bin().exists(), "no %s: build bench/loadgen first" % loadgen_bin()
    out = d / ("loadgen-%d.json" % time.monotonic_ns())
    argv = [str(loadgen_bin()), "--url", "http://127.0.0.1:%d%s" % (port, path),
            "--json", str(out)]
    if stream_body is not None:
        body = d / "body.json"
        body.write_bytes(h.chat_body("mock-model", stream=stream_body))
        argv += ["--body", str(body)]
    argv += [str(a) for a in args]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                       env=h.child_env())
    text = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    assert p.returncode == 0, "loadgen exited %d:\n%s" % (p.returncode, text)
    rep = h.sanitizer_report(text)
    assert rep is None, "loadgen: sanitizer report:\n" + rep
    doc = json.loads(out.read_text())
    doc["_text"] = text  # for failure messages
    return doc


def open_loop(connections):
    return ["--rate", RATE, "--connections", connections, "--duration", DURATION,
            "--warmup", WARMUP]


def check(cond, doc, what, *args):
    """assert with the figures on the first line and loadgen's report below."""
    assert cond, (what % args) + "\n" + doc["_text"]


def assert_clean(doc):
    check(doc["errors"]["total"] == 0, doc, "%d errors", doc["errors"]["total"])
    check(doc["non_2xx"] == 0, doc, "%d non-2xx", doc["non_2xx"])
    check(doc["status"]["2xx"] == doc["requests"], doc, "2xx %d of %d", doc["status"]["2xx"],
          doc["requests"])


def assert_near(doc, name, got, want, tolerance):
    check(abs(got - want) <= tolerance * want, doc, "%s %s, want %s within %d%%", name, got,
          want, tolerance * 100)


def assert_at_least(doc, name, got, low):
    check(got >= low, doc, "%s %s, want >= %s", name, got, low)


def assert_below(doc, name, got, high):
    check(got < high, doc, "%s %s, want < %s", name, got, high)


# ---------------------------------------------------------------- a known delay

@h.timeout(30)
def test_loadgen_known_delay(env):
    d = workdir(env)
    mock = start_mock(env, d, "--latency-ms", "20")
    doc = run_loadgen(d, mock.port, *open_loop(8), path="/v1/chat/completions",
                      stream_body=False)
    assert_clean(doc)
    check(doc["mode"] == "open", doc, "mode %s", doc["mode"])
    assert_near(doc, "requests", doc["requests"], RATE * DURATION, 0.1)
    assert_near(doc, "throughput_rps", doc["throughput_rps"], RATE, 0.1)
    lat = doc["latency_us"]
    check(lat["count"] == doc["requests"], doc, "latency count %d", lat["count"])
    # never faster than the injected delay: the minimum is exact, and percentiles are
    # clamped to it, so no precision allowance is due
    assert_at_least(doc, "latency min", lat["min"], 20000)
    assert_at_least(doc, "latency p50", lat["p50"], 20000)
    assert_at_least(doc, "latency p99", lat["p99"], lat["p50"])
    # ...and not much slower when nothing else is wrong
    assert_below(doc, "latency p50", lat["p50"], 20000 + 15000)
    # 4 requests in flight on average: 8 connections never ran out, nothing queued
    assert_below(doc, "backlog_at_end", doc["backlog_at_end"], 3)
    # requests sent in the window and responses ended in it differ by those in flight
    assert_near(doc, "send lag count", doc["send_lag_us"]["count"], doc["requests"], 0.05)


# ---------------------------------------------------------------- a server that stalls once

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class StallOnce:
    """FakeUpstream script: answer at once, except that from `after` seconds past the first
    request and for `length` seconds nothing is answered (every connection waits)."""

    def __init__(self, after, length):
        self.after = after
        self.length = length
        self.t0 = None
        self.held = 0  # responses the stall held back
        self.lock = threading.Lock()

    def __call__(self, conn, n, head, body):
        now = time.monotonic()
        with self.lock:
            if self.t0 is None:
                self.t0 = now
        start = self.t0 + self.after
        end = start + self.length
        if start <= now < end:
            with self.lock:
                self.held += 1
            time.sleep(end - now)
        return OK_RESPONSE


def stall_server(env):
    # the first request comes at the start of the warm-up: stall in the middle of the window
    stall = StallOnce(after=WARMUP + 0.7, length=0.6)
    server = h.FakeUpstream(stall)
    env.defer(server.close)
    return server, stall


@h.timeout(30)
def test_loadgen_open_loop_shows_a_stall(env):
    server, stall = stall_server(env)
    doc = run_loadgen(workdir(env), server.port, *open_loop(2))
    check(stall.held >= 1, doc, "the server never stalled")
    assert_clean(doc)
    # the schedule goes on during the stall: everything due in it is sent late, and counted
    assert_near(doc, "requests", doc["requests"], RATE * DURATION, 0.1)
    lat, lag, raw = doc["latency_us"], doc["send_lag_us"], doc["latency_uncorrected_us"]
    # ~120 of ~400 requests fell due in the 600 ms stall: latency from the intended send
    # time shows each one's wait, so well over 10% of requests took 100+ ms
    assert_at_least(doc, "latency p90", lat["p90"], 100000)
    assert_at_least(doc, "latency max", lat["max"], 500000)
    # the scheduling delay shows the same stall
    assert_near(doc, "send lag count", lag["count"], doc["requests"], 0.05)
    assert_at_least(doc, "send lag p90", lag["p90"], 100000)
    assert_at_least(doc, "send lag max", lag["max"], 450000)
    # the same run timed from the actual send (what a coordinated-omission-prone tool
    # reports): only the 1-2 requests on the wire when it began saw the stall
    check(raw["count"] == lat["count"], doc, "uncorrected count %d", raw["count"])
    assert_at_least(doc, "uncorrected max", raw["max"], 500000)
    assert_below(doc, "uncorrected p90", raw["p90"], 50000)
    assert_below(doc, "uncorrected p90 x 4", raw["p90"] * 4, lat["p90"])


@h.timeout(30)
def test_loadgen_closed_loop_hides_a_stall(env):
    # The contrast: a closed loop sends nothing while its connections wait, so the same
    # stall touches one request per connection and the percentiles stay low.
    server, stall = stall_server(env)
    doc = run_loadgen(workdir(env), server.port, "--connections", 2, "--duration", DURATION,
                      "--warmup", WARMUP)
    check(stall.held >= 1, doc, "the server never stalled")
    assert_clean(doc)
    check(doc["mode"] == "closed", doc, "mode %s", doc["mode"])
    lat = doc["latency_us"]
    assert_at_least(doc, "requests", lat["count"], 100)
    assert_at_least(doc, "latency max", lat["max"], 500000)
    assert_below(doc, "latency p90", lat["p90"], 50000)
    check(doc["send_lag_us"]["count"] == 0, doc, "send lag in a closed loop")


# ---------------------------------------------------------------- event streams

TOKENS = 10
EVENTS = TOKENS + 3  # the role chunk, a chunk per token, the finish chunk, [DONE]
EVENT_DELAY_MS = 5
SSE_RATE = 50
SSE_DURATION = 1.5


def sse_run(env, extra_headers=(), *args):
    d = workdir(env)
    mock = start_mock(env, d, "--event-delay-ms", str(EVENT_DELAY_MS))
    headers = ["--header", "x-mock-tokens: %d" % TOKENS]
    for hd in extra_headers:
        headers += ["--header", hd]
    return run_loadgen(d, mock.port, "--stream", "--rate", SSE_RATE, "--connections", 8,
                       "--duration", SSE_DURATION, "--warmup", 0.3, *headers, *args,
                       path="/v1/chat/completions", stream_body=True)


def check_equal(doc, **want):
    for key, value in want.items():
        check(doc[key] == value, doc, "%s %s, want %s", key, doc[key], value)


@h.timeout(30)
def test_loadgen_sse_events_and_gaps(env):
    doc = sse_run(env, (), "--stall-ms", 2, "--expect-events", EVENTS)
    assert_clean(doc)
    n = doc["requests"]
    assert_near(doc, "requests", n, SSE_RATE * SSE_DURATION, 0.15)
    check_equal(doc, events=EVENTS * n, events_per_response=EVENTS, responses_without_events=0)
    # nothing lost, every stream ended with [DONE], none cut off
    check_equal(doc, expect_events=EVENTS, responses_short=0, events_lost=0,
                responses_without_done=0, streams_cut=0)
    # the mock waits 5 ms between events: gaps are no shorter, give or take the histogram's
    # precision, except where the generator read two events late and at once
    gap = doc["event_gap_us"]
    assert_near(doc, "event gaps", gap["count"], (EVENTS - 1) * n, 0.2)
    assert_at_least(doc, "event gap p50", gap["p50"],
                    EVENT_DELAY_MS * 1000 * (1 - HIST_PRECISION))
    assert_below(doc, "event gap p50", gap["p50"], EVENT_DELAY_MS * 1000 + 15000)
    check(doc["ttfe_us"]["count"] == n, doc, "ttfe count %d", doc["ttfe_us"]["count"])
    # 13 events per stream, 50 streams a second
    assert_near(doc, "events_per_s", doc["events_per_s"], EVENTS * SSE_RATE, 0.15)
    # every 5 ms gap is over a 2 ms threshold
    check_equal(doc, stall_ms=2)
    assert_at_least(doc, "stalls", doc["stalls"], 0.5 * gap["count"])
    assert_at_least(doc, "responses_stalled", doc["responses_stalled"], 0.9 * n)


@h.timeout(30)
def test_loadgen_sse_counters_stay_quiet_within_bounds(env):
    # A threshold above the pace finds no stall; expecting one event too many finds every
    # response one short: the counters move only when they should.
    doc = sse_run(env, (), "--stall-ms", 1000, "--expect-events", EVENTS + 1)
    assert_clean(doc)
    n = doc["requests"]
    assert_at_least(doc, "requests", n, 1)
    check_equal(doc, events=EVENTS * n, stalls=0, responses_stalled=0, responses_short=n,
                events_lost=n, responses_without_done=0)


@h.timeout(30)
def test_loadgen_sse_cut_streams_lose_events(env):
    # The mock drops each connection after 5 events: no response ends, every stream is cut
    # short of its [DONE] and counted as such (and as a read error).
    doc = sse_run(env, ("x-mock-disconnect-after: 5",), "--expect-events", EVENTS)
    cut = doc["streams_cut"]
    assert_at_least(doc, "streams_cut", cut, 1)
    assert_at_least(doc, "read errors", doc["errors"]["read"], cut)
    check_equal(doc, requests=0, responses_short=cut, events_lost=(EVENTS - 5) * cut,
                responses_without_done=cut, stall_ms=0, stalls=0)  # no threshold given
