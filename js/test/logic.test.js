// The client's pure logic: SSE parsing, positions (duplicates, gaps), tokens, backoff, URLs.
// Run: node --test js/test/   (no npm install needed)

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  backoff,
  claims,
  compareIds,
  parser,
  positions,
  refreshDelay,
  streamUrl,
} from "../src/sserelay.js";

function parse(chunks) {
  const seen = [];
  const p = parser(
    (type, data, own, last) => seen.push({ type, data, own, last }),
    (text) => seen.push({ comment: text }),
    (ms) => seen.push({ retry: ms }),
  );
  for (const chunk of chunks) p.feed(chunk);
  return seen;
}

test("parser: fields, comments, retry and multi-line data, as EventSource reads them", () => {
  const seen = parse([
    "retry: 2417\n\n: ready\n\n",
    "event: chat\nid: 7\ndata: line 1\ndata:line 2\n\n",
    "data\n\n", // a field without a colon: empty data
    "data: ünï 😀\n\n",
  ]);
  assert.deepEqual(seen, [
    { retry: 2417 },
    { comment: "ready" },
    { type: "chat", data: "line 1\nline 2", own: "7", last: "7" },
    { type: "message", data: "", own: null, last: "7" },
    { type: "message", data: "ünï 😀", own: null, last: "7" },
  ]);
});

test("parser: CRLF, CR and LF end lines, also split across chunks", () => {
  const seen = parse(["data: a\r", "\ndata: b\r", "data: c\n", "\r\n", "data: d\r\r"]);
  assert.deepEqual(seen, [{ type: "message", data: "a\nb\nc", own: null, last: "" }]);
  // The CR at the very end may be half a CRLF: the blank line is complete once more comes.
  assert.deepEqual(parse(["data: d\r\r", "x"]), [
    { type: "message", data: "d", own: null, last: "" },
  ]);
});

test("parser: no dispatch without data; an id with NUL is ignored; bad retry ignored", () => {
  const seen = parse(["event: x\nid: 3\n\n", "id: 4\0\ndata: y\nretry: 1x\n\n"]);
  assert.deepEqual(seen, [{ type: "message", data: "y", own: null, last: "3" }]);
});

test("compareIds orders integers and Redis entry ids numerically", () => {
  assert.equal(compareIds("9", "10") < 0, true);
  assert.equal(compareIds("10", "10"), 0);
  assert.equal(compareIds("1718000000000-2", "1718000000000-10") < 0, true);
  assert.equal(compareIds("1718000000001-0", "1718000000000-10") > 0, true);
  assert.equal(compareIds("18446744073709551616", "9223372036854775807") > 0, true);
});

test("positions: a single channel drops repeats and reports holes", () => {
  const p = positions(["lobby"]);
  assert.deepEqual(p.take("5"), { channel: "lobby" });
  assert.deepEqual(p.take("6"), { channel: "lobby", gaps: [] });
  assert.deepEqual(p.take("6"), { dup: true });
  assert.deepEqual(p.take("4"), { dup: true });
  assert.deepEqual(p.take("9"), {
    channel: "lobby",
    gaps: [{ channel: "lobby", after: "6", next: "9" }],
  });
  assert.equal(p.id, "9");
});

test("positions: Redis ids are ordered but never a gap (they are not contiguous)", () => {
  const p = positions(["q"]);
  p.take("1718000000000-0");
  assert.deepEqual(p.take("1718000000500-0").gaps, []);
  assert.deepEqual(p.take("1718000000000-0"), { dup: true });
});

test("positions: several channels, ids as vectors in code point order of the names", () => {
  // Python sorts "😀" (U+1F600) after "ﬀ" (U+FB00); UTF-16 order would put it first.
  const p = positions(["😀", "ﬀ", "a"]);
  p.take("1.2.3");
  assert.deepEqual(p.take("1.3.3"), { channel: "ﬀ", gaps: [] });
  assert.deepEqual(p.take("1.3.5"), {
    channel: "😀",
    gaps: [{ channel: "😀", after: "3", next: "5" }],
  });
  assert.deepEqual(p.take("1.3.5"), { dup: true });
  assert.equal(p.id, "1.3.5");
});

test("positions: missed moves the channel on; initial id; opaque ids are kept as they are", () => {
  const p = positions(["a", "b"], "4.10");
  p.skip("b", 20);
  assert.deepEqual(p.take("4.21"), { channel: "b", gaps: [] });
  const q = positions(["a"]);
  assert.deepEqual(q.take("not-a-number"), {});
  assert.equal(q.id, "not-a-number");
  assert.deepEqual(q.take("not-a-number"), {}, "an opaque id is never called a duplicate");
});

function jwt(payload) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part(payload)}.sig`;
}

test("claims and refreshDelay: a fifth of the lifetime early, never from a skewed clock", () => {
  const now = 1_000_000_000_000;
  const t = now / 1e3;
  assert.deepEqual(claims(jwt({ exp: t + 5, iat: t })), { exp: t + 5, iat: t });
  assert.deepEqual(claims("not a token"), {});
  assert.equal(refreshDelay(jwt({ exp: t + 5, iat: t }), now), 4000);
  assert.equal(refreshDelay(jwt({ exp: t + 3600, iat: t }), now), 3540e3, "a minute early");
  // The browser's clock is ten minutes ahead: the token's own lifetime decides.
  assert.equal(refreshDelay(jwt({ exp: t + 5, iat: t }), now + 600e3), 4000);
  assert.equal(refreshDelay(jwt({ exp: t + 0.5, iat: t }), now), null, "too short to refresh");
  assert.equal(refreshDelay("opaque"), null);
});

test("backoff doubles, is capped at 30 s and jittered to [0.5, 1) of that", () => {
  for (let i = 0; i < 200; i++) {
    const d = backoff(1000, 3);
    assert.ok(d >= 4000 && d < 8000, d);
    const capped = backoff(1000, 50);
    assert.ok(capped >= 15000 && capped < 30000, capped);
  }
});

test("streamUrl builds /events/{channel} and ?channel= URLs under a base URL", () => {
  assert.equal(streamUrl("https://r.example/", ["a/b c"]), "https://r.example/events/a%2Fb%20c");
  assert.equal(streamUrl("/sse", ["a", "ü"]), "/sse/events?channel=a&channel=%C3%BC");
  assert.equal(streamUrl("/sse/events/x?token=t", []), "/sse/events/x?token=t");
});
