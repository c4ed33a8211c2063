#!/usr/bin/env python3
"""Writes chat-large.json: a ~100 KB chat completion (system prompt, tools, and a user message
carrying a long service log to summarize), the bench's large-prompt body. Deterministic: the
same bytes every time, so runs stay comparable. Run it from anywhere; it writes next to itself.
"""
import json
from pathlib import Path

TARGET_BYTES = 100 * 1024

SERVICES = ["api-gateway", "billing", "export-worker", "auth", "search", "object-store-proxy"]
LEVELS = ["INFO", "INFO", "INFO", "WARN", "INFO", "ERROR", "INFO", "DEBUG"]
# (message, modulus of its number)
MESSAGES = [
    ("request completed status=200 route=/v2/exports/{{id}} bytes={n}", 100000),
    ("upstream slow: object-store responded in {n} ms (budget 800 ms)", 4000),
    ("signature mismatch for key id=AKIA{n:08d} region=eu-west-2, retrying with refreshed creds",
     100000000),
    ("job export-nightly chunk {n} uploaded, etag verified", 5000),
    ("token refresh for service account svc-export succeeded, expires in {n} s", 3600),
    ("rate limit near: {n} of 1000 requests in the current window", 1000),
    ("connection pool to db-primary: {n} in use, 2 idle", 64),
    ("cache miss for tenant config t-{n}, loaded from store", 10000),
]


def lcg(seed):
    while True:
        seed = (seed * 6364136223846793005 + 1442695040888963407) % 2**64
        yield seed >> 33


def log_text(limit):
    rnd, lines, size = lcg(8), [], 0
    second = 0
    while size < limit:
        r = next(rnd)
        second += r % 3
        svc = SERVICES[r % len(SERVICES)]
        level = LEVELS[(r >> 5) % len(LEVELS)]
        fmt, modulus = MESSAGES[(r >> 9) % len(MESSAGES)]
        msg = fmt.format(n=(r >> 13) % modulus)
        line = (f"2026-11-24T02:{(second // 60) % 60:02d}:{second % 60:02d}.{r % 1000:03d}Z "
                f"{level:<5} {svc} [req-{r % 0xFFFFFF:06x}] {msg}")
        lines.append(line)
        size += len(line) + 2  # JSON escapes the newline as \n
    return "\n".join(lines)


def body(log_bytes):
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": (
                "You are an on-call assistant for Acme Cloud's platform team. Read the logs the "
                "user pastes, find the first error that explains the incident, and answer with: "
                "a one-paragraph summary, the probable cause, the evidence (quote at most five "
                "log lines), and the next three checks in order. Never invent services or "
                "metrics that do not appear in the logs. Use the tools when a lookup would "
                "settle a question.")},
            {"role": "user", "content": (
                "Our nightly export to object storage failed with '403 AccessDenied: request "
                "signature does not match'. Here are the logs from 02:00 to the failure. What "
                "happened?\n\n" + log_text(log_bytes))},
        ],
        "tools": [
            {"type": "function", "function": {
                "name": "get_key_metadata",
                "description": "Look up an access key: owner, creation and rotation dates.",
                "parameters": {"type": "object", "properties": {
                    "key_id": {"type": "string", "description": "the access key id"}},
                    "required": ["key_id"]}}},
            {"type": "function", "function": {
                "name": "get_deploys",
                "description": "List the deploys of a service in a time range.",
                "parameters": {"type": "object", "properties": {
                    "service": {"type": "string"},
                    "since": {"type": "string", "description": "RFC 3339 time"},
                    "until": {"type": "string", "description": "RFC 3339 time"}},
                    "required": ["service", "since"]}}},
        ],
        "temperature": 0.2,
    }


def main():
    fixed = len(json.dumps(body(0), indent=2)) + 1
    text = json.dumps(body(TARGET_BYTES - fixed), indent=2) + "\n"
    out = Path(__file__).resolve().parent / "chat-large.json"
    out.write_text(text)
    print(f"{out}: {len(text.encode())} bytes")


if __name__ == "__main__":
    main()
