// bench.js - tokenizer throughput, providers/tokenize (tokenize-cli --bench) next to the npm
// tiktoken package (WASM), one core each, on the same texts: best of several runs.
//
//   node bench.js --cli BUILD/providers/tokenize-cli --vocab-dir DIR [--reps N]
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { execFileSync } = require("child_process");
const { get_encoding } = require("tiktoken");
const { bigText } = require("./corpus");

const a = { cli: null, vocabDir: null, reps: 7 };
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i], v = process.argv[i + 1];
  if (k === "--cli") a.cli = v;
  else if (k === "--vocab-dir") a.vocabDir = v;
  else if (k === "--reps") a.reps = Number(v);
  else throw new Error("unknown argument " + k);
}
if (!a.cli || !a.vocabDir) throw new Error("usage: bench.js --cli PATH --vocab-dir DIR [--reps N]");

const texts = [
  ["english+code 1 MB", bigText(1 << 20, 7, true)],
  ["mixed 1 MB", bigText(1 << 20, 42, false)],
];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tokbench-"));
const fmt = (x, d) => x.toFixed(d).padStart(8);
console.log("encoding     text                     tokens |  tiktoken MB/s Mtok/s |" +
  " penstock encode MB/s Mtok/s | count MB/s Mtok/s | speed-up");
for (const name of ["o200k_base", "cl100k_base"]) {
  const enc = get_encoding(name);
  for (const [label, text] of texts) {
    const bytes = Buffer.byteLength(text);
    let best = Infinity, n = 0;
    enc.encode_ordinary(text); // warm up the WASM
    for (let r = 0; r < a.reps; r++) {
      const t0 = process.hrtime.bigint();
      n = enc.encode_ordinary(text).length;
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    const f = path.join(dir, "text.txt");
    fs.writeFileSync(f, text);
    const vocab = path.join(a.vocabDir, name + ".tok");
    const p = JSON.parse(execFileSync(a.cli, ["--vocab", vocab, "--bench", String(a.reps), f]).toString());
    if (p.tokens !== n) throw new Error(`${name} ${label}: ${p.tokens} tokens, tiktoken ${n}`);
    console.log(`${name.padEnd(12)} ${label.padEnd(20)} ${String(n).padStart(10)} | ` +
      `${fmt(bytes / best / 1e6, 2)} ${fmt(n / best / 1e6, 3)} |       ` +
      `${fmt(p.encode_mb_s, 2)} ${fmt(p.encode_mtok_s, 3)} | ` +
      `${fmt(p.count_mb_s, 2)} ${fmt(p.count_mtok_s, 3)} | ${fmt(best / p.encode_s, 1)}x`);
  }
  enc.free();
}

// The stream counter (providers/tokcount, tokcount-cli next to tokenize-cli): the same texts
// as a JSON string body, fed in deltas of 4 bytes (about a token, as providers stream) and
// 64 bytes; its final count must equal tiktoken's.
const { escapeBytes } = require("./counters");
const tcli = path.join(path.dirname(a.cli), "tokcount-cli");
console.log("\nstream counter (JSON string deltas)        |  tiktoken MB/s Mtok/s | " +
  "delta 4 B MB/s Mtok/s | delta 64 B MB/s Mtok/s");
for (const name of ["o200k_base", "cl100k_base"]) {
  const enc = get_encoding(name);
  for (const [label, text] of texts) {
    const bytes = Buffer.byteLength(text);
    let best = Infinity, n = 0;
    for (let r = 0; r < a.reps; r++) {
      const t0 = process.hrtime.bigint();
      n = enc.encode_ordinary(text).length;
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    const f = path.join(dir, "text.raw");
    fs.writeFileSync(f, escapeBytes(Buffer.from(text, "utf8")));
    const run = (step) => {
      const p = JSON.parse(execFileSync(tcli, ["--vocab-dir", a.vocabDir, "--tokenizer", name,
        "--bench-stream", String(step), f]).toString());
      if (p.tokens !== n) throw new Error(`${name} ${label}: stream ${p.tokens} tokens, tiktoken ${n}`);
      return p;
    };
    const p4 = run(4), p64 = run(64);
    console.log(`${name.padEnd(12)} ${label.padEnd(20)} ${String(n).padStart(10)} | ` +
      `${fmt(bytes / best / 1e6, 2)} ${fmt(n / best / 1e6, 3)} | ` +
      `${fmt(bytes / p4.s / 1e6, 2)} ${fmt(n / p4.s / 1e6, 3)} | ` +
      `${fmt(bytes / p64.s / 1e6, 2)} ${fmt(n / p64.s / 1e6, 3)}`);
  }
  enc.free();
}
fs.rmSync(dir, { recursive: true, force: true });
