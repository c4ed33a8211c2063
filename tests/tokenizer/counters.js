// counters.js - providers/tokcount against tiktoken: the stream counter, the event scanners
// and the prompt counter (driven through BUILD/providers/tokcount-cli). oracle.js calls
// checkCounters once per encoding.
//
// Stream: every corpus text is written as a JSON string body, (a) byte for byte (invalid
// UTF-8 kept, only '"', '\' and controls escaped) and (b) with random \uXXXX escapes
// (surrogate pairs included), plus texts with lone surrogates; the body is fed to one
// counter in steps (every byte, 3, 7, random 1..64, 4093), so deltas are cut inside escapes
// and UTF-8 sequences. The final count must be tiktoken's count of the decoded text.
// Events: OpenAI and Anthropic SSE streams carrying a text and tool arguments as deltas: the
// count is the sum of the two texts' counts, and the usage is read back.
// Prompt: OpenAI chat bodies built from corpus texts: the count must be the cookbook's
// formula over tiktoken counts (3 per message, +1 per name, +3 reply priming).
"use strict";

const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const { rng } = require("./corpus");

const lone = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
// What tiktoken's WASM gets for a JS string: lone surrogates become U+FFFD.
const wellFormed = (s) => s.replace(lone, "\ufffd");

function hex4(u, r) {
  const h = u.toString(16).padStart(4, "0");
  return r() < 0.5 ? h : h.toUpperCase();
}

// Escape bytes the way a JSON encoder that passes UTF-8 through would, keeping invalid bytes.
function escapeBytes(bytes) {
  const out = [];
  for (const b of bytes) {
    if (b === 0x22) out.push(0x5c, 0x22);
    else if (b === 0x5c) out.push(0x5c, 0x5c);
    else if (b === 0x0a) out.push(0x5c, 0x6e);
    else if (b === 0x09) out.push(0x5c, 0x74);
    else if (b === 0x0d) out.push(0x5c, 0x72);
    else if (b < 0x20) out.push(...Buffer.from("\\u00" + b.toString(16).padStart(2, "0")));
    else out.push(b);
  }
  return Buffer.from(out);
}

// Escape a JS string with random \uXXXX escapes (surrogate pairs as two) and short escapes.
function escapeRandom(s, seed) {
  const r = rng(seed);
  const shorts = { 0x22: '\\"', 0x5c: "\\\\", 0x0a: "\\n", 0x09: "\\t", 0x08: "\\b", 0x0c: "\\f",
    0x0d: "\\r", 0x2f: "\\/" };
  let out = "";
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    const lo = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
    if (u >= 0xd800 && u <= 0xdbff && lo >= 0xdc00 && lo <= 0xdfff) {
      out += r() < 0.5 ? "\\u" + hex4(u, r) + "\\u" + hex4(lo, r) : s[i] + s[i + 1];
      i++;
    } else if ((u >= 0xd800 && u <= 0xdfff) || u < 0x20 || u === 0x22 || u === 0x5c || r() < 0.3) {
      out += shorts[u] && r() < 0.7 ? shorts[u] : "\\u" + hex4(u, r);
    } else {
      out += s[i];
    }
  }
  return Buffer.from(out, "utf8");
}

function tcli(a, name, args, files) {
  const bin = path.join(path.dirname(a.cli), "tokcount-cli");
  const out = execFileSync(bin, ["--vocab-dir", a.vocabDir, "--tokenizer", name, ...args, ...files],
    { maxBuffer: 1 << 30, stdio: ["ignore", "pipe", "inherit"] }).toString();
  return out.split("\n");
}

function sseOpenAI(t1, t2, seed, prompt, completion) {
  const r = rng(seed);
  const ev = [];
  const chunk = (delta) => "data: " + JSON.stringify({ id: "c", object: "chat.completion.chunk",
    created: 1, model: "gpt-4o", choices: [{ index: 0, delta, finish_reason: null }], usage: null }) + "\n\n";
  const pieces = (t) => {
    const cps = Array.from(t), out = [];
    for (let i = 0; i < cps.length;) {
      const n = 1 + Math.floor(r() * 8);
      out.push(cps.slice(i, i + n).join(""));
      i += n;
    }
    return out;
  };
  ev.push(chunk({ role: "assistant", content: "" }));
  for (const p of pieces(t1)) ev.push(chunk({ content: p }));
  ev.push(chunk({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "f", arguments: "" } }] }));
  for (const p of pieces(t2)) ev.push(chunk({ tool_calls: [{ index: 0, function: { arguments: p } }] }));
  ev.push("data: " + JSON.stringify({ id: "c", choices: [], usage: { prompt_tokens: prompt,
    completion_tokens: completion, total_tokens: prompt + completion } }) + "\n\n");
  ev.push("data: [DONE]\n\n");
  return ev.join("");
}

function sseAnthropic(t1, t2, seed, prompt, completion) {
  const r = rng(seed);
  const ev = [];
  const e = (type, obj) => `event: ${type}\ndata: ${JSON.stringify({ type, ...obj })}\n\n`;
  const pieces = (t) => {
    const cps = Array.from(t), out = [];
    for (let i = 0; i < cps.length;) {
      const n = 1 + Math.floor(r() * 8);
      out.push(cps.slice(i, i + n).join(""));
      i += n;
    }
    return out;
  };
  ev.push(e("message_start", { message: { id: "m", type: "message", role: "assistant", content: [],
    usage: { input_tokens: prompt, output_tokens: 1 } } }));
  ev.push(e("content_block_start", { index: 0, content_block: { type: "text", text: "" } }));
  for (const p of pieces(t1)) ev.push(e("content_block_delta", { index: 0, delta: { type: "text_delta", text: p } }));
  ev.push(e("content_block_stop", { index: 0 }));
  ev.push(e("ping", {}));
  for (const p of pieces(t2)) ev.push(e("content_block_delta", { index: 1, delta: { type: "input_json_delta", partial_json: p } }));
  ev.push(e("message_delta", { delta: { stop_reason: "tool_use" }, usage: { output_tokens: completion } }));
  ev.push(e("message_stop", {}));
  return ev.join("");
}

function checkCounters(a, name, enc, list, texts, result) {
  const dir = path.join(a.work, name, "counters");
  fs.mkdirSync(dir, { recursive: true });
  const count = (s) => enc.encode_ordinary(wellFormed(s)).length;
  const write = (f, data) => { const p = path.join(dir, f); fs.writeFileSync(p, data); return p; };

  // ---- stream counter ----
  const streams = []; // {name, file, want, big}
  list.forEach((c, i) => {
    streams.push({ name: `${c.name} (bytes)`, file: write(`b${i}.raw`, escapeBytes(c.bytes)), want: count(texts[i]), big: c.big });
    streams.push({ name: `${c.name} (\\u escapes)`, file: write(`u${i}.raw`, escapeRandom(texts[i], 1000 + i)), want: count(texts[i]), big: c.big });
  });
  const lones = ["a\ud800b", "\udc00", "x\ud83d", "\ud83d\ud83d\ude00", "\ude00\ud83d", "end \ud800",
    "\ud800\ud800\ud800 lone highs", "mixed 😀\udbff\udfff\udfff", "日本\ud800語"];
  lones.forEach((s, i) => {
    streams.push({ name: `lone surrogates ${i}`, file: write(`l${i}.raw`, escapeRandom(s, 77 + i)), want: count(s) });
  });
  {
    // parts: three texts, each counted on its own
    const sel = [3, 4, 6].map((k) => k % list.length);
    const raw = Buffer.concat(sel.flatMap((k, j) => [escapeRandom(texts[k], 5 + j), Buffer.from([0x1e])]).slice(0, -1));
    streams.push({ name: "three parts", file: write("parts.raw", raw), want: sel.reduce((n, k) => n + count(texts[k]), 0) });
  }
  const small = streams.filter((s) => !s.big);
  const runs = [
    ["1", small.filter((s) => fs.statSync(s.file).size <= 8192)],
    ["3", small], ["7", small], ["0", streams], ["4093", streams],
  ];
  for (const [step, which] of runs) {
    const out = tcli(a, name, ["--stream", step], which.map((s) => s.file));
    which.forEach((s, k) => result(out[k] === String(s.want),
      `${name} stream counter by ${step === "0" ? "random steps" : step} ${s.name}`, `got ${out[k]} want ${s.want}`));
  }

  // ---- events ----
  const pairs = [[3, 5], [6, 7], [8, 11], [4, 35]].map(([x, y]) => [x % list.length, y % list.length]);
  const bigIdx = list.findIndex((c) => c.name === "1 MB mixed text");
  if (bigIdx >= 0) pairs.push([bigIdx, 5]);
  for (const [dialect, make] of [["openai", sseOpenAI], ["anthropic", sseAnthropic]]) {
    const files = pairs.map(([x, y], k) => write(`${dialect}${k}.sse`, make(texts[x], texts[y], 900 + k, 1000 + k, 2000 + k)));
    const out = tcli(a, name, ["--events", dialect], files);
    pairs.forEach(([x, y], k) => {
      const want = `${count(texts[x]) + count(texts[y])} ${1000 + k} ${2000 + k} ${dialect === "openai" ? 1 : 0}`;
      result(out[k] === want, `${name} ${dialect} events ${list[x].name} + ${list[y].name}`, `got ${out[k]} want ${want}`);
    });
  }

  // ---- prompt ----
  const smallIdx = list.map((c, i) => i).filter((i) => !list[i].big);
  const bodies = [];
  for (let b = 0; b < smallIdx.length; b += 3) {
    const t = (k) => texts[smallIdx[(b + k) % smallIdx.length]];
    const msgs = [
      { role: "system", content: t(0) },
      { role: "user", name: "alice", content: t(1) },
      { role: "assistant", content: t(2) },
      { role: "user", content: [{ type: "text", text: t(3) }, { type: "text", text: t(4) }] },
    ];
    let want = 3;
    for (const m of msgs) {
      want += 3 + count(m.role);
      if (m.name) want += 1 + count(m.name);
      if (typeof m.content === "string") want += count(m.content);
      else for (const p of m.content) want += count(p.text);
    }
    bodies.push({ file: write(`body${b}.json`, JSON.stringify({ model: "gpt-4o", messages: msgs, stream: true })),
      want, name: list[smallIdx[b]].name });
  }
  const out = tcli(a, name, ["--prompt", "openai"], bodies.map((b) => b.file));
  bodies.forEach((b, k) => {
    const [tokens, bound, exact] = (out[k] || "").split(" ").map(Number);
    result(tokens === b.want && exact === 1 && bound >= tokens,
      `${name} prompt counter, bodies from ${b.name}`, `got "${out[k]}" want ${b.want}`);
  });
}

module.exports = { checkCounters, escapeBytes };
