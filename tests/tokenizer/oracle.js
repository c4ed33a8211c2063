// oracle.js - providers/tokenize against the npm `tiktoken` package, token for token.
//
//   node oracle.js --cli BUILD/providers/tokenize-cli --vocab-dir DIR --work DIR
//
// For o200k_base and cl100k_base and every corpus case (corpus.js): the ids with special
// tokens as text (tiktoken's encode_ordinary) and recognised (encode(text, "all")), the
// tokenizer's own checks (count == encode length, decode round trip), and the count that
// the growing-text API reaches when fed in small steps. Bytes that are not valid UTF-8 go to
// tiktoken through a WHATWG decoder (each invalid subpart -> U+FFFD), as the C side does.
// Ends with "N passed, M failed".
"use strict";

const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const { get_encoding } = require("tiktoken");
const { cases } = require("./corpus");
const { checkCounters } = require("./counters");

function args() {
  const a = { cli: null, vocabDir: null, work: null, only: null };
  for (let i = 2; i < process.argv.length; i++) {
    const k = process.argv[i], v = process.argv[i + 1];
    if (k === "--cli") a.cli = v;
    else if (k === "--vocab-dir") a.vocabDir = v;
    else if (k === "--work") a.work = v;
    else if (k === "--only") a.only = v;
    else throw new Error("unknown argument " + k);
    i++;
  }
  if (!a.cli || !a.vocabDir || !a.work) throw new Error("usage: oracle.js --cli PATH --vocab-dir DIR --work DIR");
  return a;
}

let passed = 0, failed = 0;
function result(ok, what, detail) {
  if (ok) { passed++; return; }
  failed++;
  console.log("FAIL " + what + (detail ? ": " + detail : ""));
}

function firstDiff(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return `at token ${i}: got [${a.slice(i, i + 6).join(" ")}] want [${b.slice(i, i + 6).join(" ")}] ` +
    `(${a.length} vs ${b.length} tokens)`;
}

function cli(a, vocab, extra, files) {
  const out = execFileSync(a.cli, ["--vocab", vocab, ...extra, ...files],
    { maxBuffer: 1 << 30, stdio: ["ignore", "pipe", "inherit"] }).toString();
  return out.split("\n");
}

function runEncoding(a, name) {
  const vocab = path.join(a.vocabDir, name + ".tok");
  const enc = get_encoding(name);
  // --only NAME: the cases whose name has NAME; --only counters: just the counters, all cases.
  const countersOnly = a.only === "counters";
  const list = cases().filter((c) => !a.only || countersOnly || c.name.includes(a.only));
  const dir = path.join(a.work, name);
  fs.mkdirSync(dir, { recursive: true });
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  const files = list.map((c, i) => {
    const f = path.join(dir, `case${i}.txt`);
    fs.writeFileSync(f, c.bytes);
    return f;
  });
  const texts = list.map((c) => decoder.decode(c.bytes));
  if (countersOnly) {
    checkCounters(a, name, enc, list, texts, result);
    enc.free();
    return;
  }

  for (const [mode, flags] of [["ordinary", []], ["special=all", ["--special", "all"]]]) {
    const got = cli(a, vocab, [...flags, "--encode"], files);
    const checks = cli(a, vocab, [...flags, "--check"], files);
    list.forEach((c, i) => {
      const want = Array.from(mode === "ordinary" ? enc.encode_ordinary(texts[i]) : enc.encode(texts[i], "all"));
      const have = got[i] === "" ? [] : got[i].split(" ").map(Number);
      const same = have.length === want.length && have.every((x, k) => x === want[k]);
      result(same, `${name} ${mode} ${c.name}`, same ? "" : firstDiff(have, want));
      result(checks[i] === "ok", `${name} ${mode} self-check ${c.name}`, checks[i]);
    });
  }

  // Growing text: fed in steps, re-counting only the unfinished tail, the count must reach
  // tiktoken's. Small texts are also checked after every single byte.
  const small = list.map((c, i) => i).filter((i) => !list[i].big);
  const big = list.map((c, i) => i).filter((i) => list[i].big);
  const runs = [
    ["7", false, [], small],
    ["7", false, ["--special", "all"], small.filter((i) => list[i].bytes.length <= 4096)],
    ["1", true, [], small.filter((i) => list[i].bytes.length <= 2048)],
    ["1", true, ["--special", "all"], small.filter((i) => list[i].bytes.length <= 600)],
    ["4093", false, [], big],
  ];
  for (const [step, verify, flags, which] of runs) {
    if (!which.length) continue;
    const args = [...flags, "--growing", step, ...(verify ? ["--verify"] : [])];
    const out = cli(a, vocab, args, which.map((i) => files[i]));
    const all = flags.length > 0;
    which.forEach((i, k) => {
      const want = (all ? enc.encode(texts[i], "all") : enc.encode_ordinary(texts[i])).length;
      result(out[k] === String(want), `${name} growing by ${step}${all ? " special=all" : ""}` +
        `${verify ? " (every step checked)" : ""} ${list[i].name}`, `got ${out[k]} want ${want}`);
    });
  }
  checkCounters(a, name, enc, list, texts, result);
  enc.free();
}

function main() {
  const a = args();
  const t0 = Date.now();
  for (const name of ["o200k_base", "cl100k_base"]) runEncoding(a, name);
  console.log(`tokenizer oracle: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main();
