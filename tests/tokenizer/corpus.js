// corpus.js - the tokenizer test corpus, built deterministically (no files shipped).
// cases() returns [{name, bytes: Buffer, big?: true}]. Bytes may be invalid UTF-8 on purpose.
"use strict";

const fs = require("fs");
const path = require("path");

// mulberry32: a small seeded PRNG, so every run builds the same texts.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const prose = `The quick brown fox jumps over the lazy dog. It's a well-known pangram; we've used it
for years, haven't we? "Quoted text," she said -- and then: (parenthetical) [bracketed] {braced}.
Mr. O'Neill's car isn't there. They'll arrive at 10:30 a.m. on 2024-03-15, won't they?
I'M SHOUTING NOW. DON'T YOU'LL WE'D THEY'RE IT'S. Résumé, naïve café, coöperate, façade.
HTTPServer XMLHttpRequest camelCaseIdentifier snake_case_identifier kebab-case-identifier PascalCase.
Prices: $1,234.56, €99.99, £5, ¥1000, 50%, 3.14159, 6.022e23, -42, +7, 1/2, ½, ², ³, ⅞.
Email: someone@example.com, URL: https://example.org/path/to/page?query=1&b=two#frag
   Indented line with trailing spaces    
\tTabbed line\t\twith tabs
Line with CRLF\r\nand a lone CR\rhere.\n\n\nThree newlines above.`;

const code = `#include <stdio.h>

int main(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		printf("%d: %s\\n", i, argv[i]); // print each argument
	}
	return 0;
}

def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

const x = { "key": [1, 2.5, -3e10, true, null], 'other': \`template \${value}\` };
if (x?.key?.length >= 2 && !flag || y !== undefined) { x.key.push(...rest); }
SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '1 day' ORDER BY id DESC;
<div class="a b" data-x='1'>&nbsp;&amp;&lt;tag&gt;</div>
    /* comment */ /** doc */ // line
a<<=2; b>>>=1; c**=3; d//=4; e::f; g->h; i=>j; k..l; m...n; o?.p; q??r;
`;

const json = JSON.stringify({
  model: "gpt-4o",
  messages: [{ role: "user", content: "Hello" }],
  tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object",
    properties: { location: { type: "string" }, unit: { enum: ["celsius", "fahrenheit"] } } } } }],
}, null, 2);

const cjk = `中文文本：人工智能正在改变世界。我们今天去公园散步吧！
日本語のテキスト：ひらがな、カタカナ、漢字を混ぜて書きます。東京は大きい都市です。
한국어 텍스트: 안녕하세요, 만나서 반갑습니다. 오늘 날씨가 좋네요.
全角文字：ＡＢＣ１２３！？　全角スペース　も入れます。`;

const emoji = `Emoji 😀😃😄 👍🏽 👍🏿 ❤️ ✨ 🔥🔥🔥
ZWJ families 👨‍👩‍👧‍👦 👩‍❤️‍💋‍👨 🧑🏽‍💻 🏳️‍🌈 🏴‍☠️ 👁️‍🗨️
Flags 🇺🇸🇯🇵🇩🇪🇧🇷 keycaps #️⃣ 1️⃣ *️⃣ variation ︎☺︎☺️ tags 🏴󠁧󠁢󠁳󠁣󠁴󠁿
Mixed text😀with👍emoji🇫🇷inside words and 1️⃣2️⃣3️⃣ numbers`;

const rtl = `العربية: مرحبا بالعالم! كيف حالك؟ هذا نص تجريبي مع أرقام ١٢٣٤٥٦ و 12345.
بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ (with harakat)
עברית: שלום עולם! זהו טקסט לדוגמה. בְּרֵאשִׁית בָּרָא אֱלֹהִים (with niqqud)
فارسی: سلام دنیا ۱۲۳۴ — اردو: ہیلو دنیا
Mixed \u200fRTL mark\u200e LTR mark \u202bembedding\u202c and العربية123English`;

const scripts = `हिन्दी: नमस्ते दुनिया, यह एक परीक्षण है। ক্ষ ত্র
ไทย: สวัสดีชาวโลก นี่คือการทดสอบ
Ελληνικά: Γειά σου Κόσμε! ΑΒΓΔ αβγδ ς
Русский: Привет, мир! ПРИВЕТ мир. Ёлка, ёжик.
Titlecase ǅǈǋ ǲ; modifiers ʰʲʷ ˀ; letters with marks e\u0301 a\u0308 n\u0303; lone mark \u0301x
Armenian Հայերեն, Georgian ქართული, Ethiopic ግዕዝ, Cherokee ᏣᎳᎩ, Tibetan བོད་ཡིག`;

const contractions = `I'm you're he'll she'd it's we've they'd Y'ALL'D o'clock rock'n'roll
'S 'T 'RE 'VE 'M 'LL 'D 's't're've'm'll'd x's x'S x'Re x'vE
Long s: x'ſ X'ſ ſ'ſ; Kelvin 'K 'k; dotted 'İ 'ı; curly ’s ‘quoted’ 
trailing apostrophe' and ''double'' and '''triple'''`;

const spaces = `a\u00a0b\u00a0\u00a0c non-breaking; ideographic\u3000space\u3000\u3000;
en\u2002em\u2003thin\u2009hair\u200a; NEL\u0085next; LS\u2028PS\u2029; VT\u000bFF\u000c;
zero-width\u200bspace\u200cnon-joiner\u200djoiner\ufeffbom; tab\t \t \tmixed
spaces before newline    \n    spaces after newline\n \n \r\n\r\n  \t\n\n  x  \n`;

const punct = `!!! ??? ... --- === *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}
,;:'"\`~|\\/<> ?! !? ... … — – • · ※ § ¶ † ‡ ‰ ′ ″ ‹ › « » „ “ ” ‘ ’
path/to/file.txt /usr/local/bin/ C:\\Windows\\System32 ../../up ./here
a//b///c////d /* */ // \\\\ ://// =>/ !/\n/ ?\n\n/ .\r\n/ ;/\n`;

const digits = `0 1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890
3.14159265358979323846264338327950288419716939937510
1,000,000 1.000.000 1 000 000 0x1F 0b1010 1e-9 1E+9 -0 +0 007
٠١٢٣٤٥٦٧٨٩ ۰۱۲۳۴۵۶۷۸۹ ०१२३४५६७८९ ０１２３４５６７８９ ①②③ ⅠⅡⅢ ¹²³ ½¼¾`;

function repeat(s, n) {
  return s.repeat(n);
}

// Words from the texts above, to build a large mixed document.
function wordsOf(text) {
  return text.split(/\s+/u).filter(Boolean);
}

// A large document of random words, numbers, CJK, emoji, contractions and whitespace
// (english: prose and code words only, ASCII separators).
function bigText(bytes, seed, english) {
  const r = rng(seed);
  const words = english ? wordsOf(prose + " " + code + " " + json)
    : wordsOf(prose + " " + code + " " + cjk + " " + emoji + " " + rtl + " " + scripts + " " + punct + " " + digits);
  const seps = [" ", " ", " ", " ", " ", "  ", "\n", "\n\n", "\t", ", ", ". ", "\r\n", "   ", " \n"];
  const parts = [];
  let n = 0;
  while (n < bytes) {
    let w;
    const k = r();
    if (k < 0.8 || (english && k < 0.95)) w = words[Math.floor(r() * words.length)];
    else if (k < 0.85) w = String(Math.floor(r() * 1e9));
    else if (k < 0.9) w = String.fromCodePoint(0x4e00 + Math.floor(r() * 2000)).repeat(1 + Math.floor(r() * 4));
    else if (k < 0.93) w = String.fromCodePoint(0x1f600 + Math.floor(r() * 80));
    else if (k < 0.96) w = "'" + ["s", "t", "re", "ve", "m", "ll", "d", "S", "LL"][Math.floor(r() * 9)];
    else w = " ".repeat(1 + Math.floor(r() * 12));
    const s = w + seps[Math.floor(r() * seps.length)];
    parts.push(s);
    n += Buffer.byteLength(s);
  }
  return parts.join("");
}

// Random code points from all planes (surrogates excluded): valid UTF-8, odd classes.
function randomCodePoints(n, seed) {
  const r = rng(seed);
  let s = "";
  for (let i = 0; i < n; i++) {
    let c;
    const k = r();
    if (k < 0.3) c = 0x20 + Math.floor(r() * 0x60);
    else if (k < 0.6) c = Math.floor(r() * 0x3000);
    else if (k < 0.8) c = Math.floor(r() * 0x10000);
    else c = Math.floor(r() * 0x110000);
    if (c >= 0xd800 && c < 0xe000) c = 0xfffd;
    s += String.fromCodePoint(c);
  }
  return s;
}

function randomLetters(n, seed) {
  const r = rng(seed);
  let s = "";
  for (let i = 0; i < n; i++) s += String.fromCharCode(97 + Math.floor(r() * 26));
  return s;
}

function randomBytes(n, seed) {
  const r = rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r() < 0.5 ? 0x20 + Math.floor(r() * 0x60) : Math.floor(r() * 256);
  return b;
}

// Every code point in [lo, hi] in a few contexts that make its class visible to the split.
function codePointContexts(list) {
  const out = [];
  for (const c of list) {
    const ch = String.fromCodePoint(c);
    out.push("a" + ch + "1" + ch + " " + ch + "A" + ch + ch + "'s" + ch + "\n" + ch + "!" + ch + "x ");
  }
  return out.join("");
}

// Code points that tools/tokconv adds to PCRE2's classes (its UNICODE_ADDED table, read
// from the script itself so that a broken pattern cannot shrink the test), and a stride
// through all of Unicode.
function unicodeSweep() {
  const src = fs.readFileSync(path.join(__dirname, "../../tools/tokconv"), "utf8");
  const table = src.slice(src.indexOf("UNICODE_ADDED = {"), src.indexOf("\n}\n", src.indexOf("UNICODE_ADDED = {")));
  const seen = new Set();
  for (const m of table.matchAll(/\b([0-9A-F]{3,6})(?:-([0-9A-F]{3,6}))?\b/g)) {
    const lo = parseInt(m[1], 16), hi = m[2] ? parseInt(m[2], 16) : lo;
    for (let c = lo; c <= hi; c++) seen.add(c);
  }
  if (seen.size < 9000) throw new Error("corpus: tools/tokconv's UNICODE_ADDED table not found");
  const added = [...seen].sort((a, b) => a - b);
  const stride = [];
  for (let c = 0; c < 0x110000; c += 61) if (c < 0xd800 || c >= 0xe000) stride.push(c);
  return { added: codePointContexts(added), stride: codePointContexts(stride) };
}

function cases() {
  const u = (name, s) => ({ name, bytes: Buffer.from(s, "utf8") });
  const b = (name, bytes) => ({ name, bytes: Buffer.from(bytes) });
  const list = [
    u("empty", ""),
    u("one letter", "a"),
    u("one space", " "),
    u("prose", prose),
    u("code", code),
    u("json tool schema", json),
    u("cjk", cjk),
    u("emoji and zwj", emoji),
    u("rtl arabic hebrew", rtl),
    u("other scripts", scripts),
    u("contractions", contractions),
    u("unicode spaces", spaces),
    u("punctuation", punct),
    u("digits", digits),
    u("10k spaces", repeat(" ", 10000)),
    u("spaces then word", repeat(" ", 3000) + "word" + repeat(" ", 3001)),
    u("newline runs", repeat("\n", 2000) + "x" + repeat("\r\n", 1000) + repeat(" \n", 1000) + repeat("\t", 500)),
    u("mixed whitespace run", repeat(" \t \u00a0\u3000\n ", 700)),
    u("10k digits", repeat("1234567890", 1000)),
    u("digits and letters", repeat("a1b22c333d4444", 500)),
    u("long letter run", repeat("a", 5000)),
    u("long mixed-case run", repeat("AbCdEfGhIj", 600)),
    u("long random lowercase", randomLetters(4000, 7)),
    u("base64 blob", Buffer.from(randomBytes(6000, 11)).toString("base64")),
    u("long punctuation run", repeat("!?.-=*", 800)),
    u("long cjk run", repeat("人工智能正在改变世界", 400)),
    u("long emoji run", repeat("👨‍👩‍👧‍👦🏳️‍🌈", 300)),
    u("special tokens", "a<|endoftext|>b <|endofprompt|> <|fim_prefix|>x<|fim_middle|>y" +
      "<|fim_suffix|>z\n<|endoftext|><|endoftext|>"),
    u("special token prefixes", "<|endof <|endoftext| <|endoftext|x |> <| <||> <|im_start|> <|endoftext|>"),
    u("bom first", "\ufeffHello BOM"),
    b("invalid: lone continuation", [0x61, 0x80, 0x62, 0xbf, 0x20, 0x80, 0x80, 0x80, 0x63]),
    b("invalid: overlong", [0xc0, 0xaf, 0x20, 0xe0, 0x80, 0xaf, 0x20, 0xf0, 0x80, 0x80, 0xaf, 0x20, 0xc1, 0xbf]),
    b("invalid: surrogates", [0xed, 0xa0, 0x80, 0x20, 0xed, 0xbf, 0xbf, 0x61, 0xed, 0x9f, 0xbf]),
    b("invalid: truncated", [0x61, 0xe2, 0x82, 0x20, 0xf0, 0x9f, 0x98, 0x21, 0xe2, 0x82]),
    b("invalid: out of range", [0xf4, 0x90, 0x80, 0x80, 0x20, 0xf5, 0x80, 0xff, 0xfe, 0x61,
      0xf8, 0x88, 0x80, 0x80, 0x80]),
    b("invalid: in tool arguments", Buffer.concat([Buffer.from('{"name":"search","arguments":"{\\"q\\": \\"caf'),
      Buffer.from([0xe9]), Buffer.from(' cr'), Buffer.from([0xe8, 0x6d, 0x65]), Buffer.from(' \\u00e9 '),
      Buffer.from([0xff, 0xfe, 0xfd]), Buffer.from(' na'), Buffer.from([0xc3]), Buffer.from('ve\\"}"}')])),
    b("invalid: random bytes", randomBytes(3000, 3)),
    u("random code points", randomCodePoints(3000, 5)),
  ];
  for (let s = 0; s < 6; s++) list.push(b("random bytes " + s, randomBytes(200 + 97 * s, 100 + s)));
  {
    const sw = unicodeSweep();
    list.push({ ...u("unicode: code points newer than PCRE2's tables", sw.added), big: true });
    list.push({ ...u("unicode: every 61st code point", sw.stride), big: true });
  }
  list.push({ name: "1 MB mixed text", bytes: Buffer.from(bigText(1 << 20, 42), "utf8"), big: true });
  return list;
}

module.exports = { cases, bigText, rng };
