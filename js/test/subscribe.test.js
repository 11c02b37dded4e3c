// subscribe() against a scripted relay (a fetch that answers as the relay would): tokens,
// resume, duplicates, gaps, missed, refusals, offline and close. Real timers with short
// delays; every wait has a deadline. The same behaviour runs in Chromium against a real relay
// in tests/test_browser_client.py.

import { test } from "node:test";
import assert from "node:assert/strict";
import { subscribe } from "../src/sserelay.js";
import { ScriptedRelay, within } from "./scripted.js";

const BASE = "http://relay.test";

/** A subscription that records what it reports; `until(predicate)` waits for a record. */
function recorder() {
  const seen = [];
  const listeners = [];
  const push = (kind) => (value) => {
    seen.push([kind, value]);
    for (const l of [...listeners]) l();
  };
  const until = (predicate, what) =>
    within(
      new Promise((resolve) => {
        const check = () => {
          const found = seen.find(([k, v]) => predicate(k, v));
          if (found) {
            listeners.splice(listeners.indexOf(check), 1);
            resolve(found[1]);
          }
        };
        listeners.push(check);
        check();
      }),
      `${what}; seen ${JSON.stringify(seen.map(([k, v]) => [k, v?.state ?? v?.data ?? v]))}`,
    );
  const options = {
    onEvent: push("event"),
    onGap: push("gap"),
    onMissed: push("missed"),
    onStatus: push("status"),
  };
  return { seen, until, options, events: () => seen.filter(([k]) => k == "event").map(([, v]) => v.data) };
}

test("events arrive; a dropped stream resumes with Last-Event-ID; repeats are dropped", async () => {
  const relay = new ScriptedRelay();
  const r = recorder();
  const sub = subscribe(BASE, { channels: "lobby", fetch: relay.fetch, ...r.options });
  try {
    const first = await relay.next();
    assert.equal(first.url, `${BASE}/events/lobby`);
    assert.equal(first.headers["Last-Event-ID"], undefined);
    const s = relay.stream(first);
    await r.until((k, v) => k == "status" && v.state == "live", "live after : ready");
    s.send("event: chat\nid: 1\ndata: one\n\nid: 2\ndata: two\n\n");
    await r.until((k, v) => k == "event" && v.data == "two", "two");
    s.end(); // the relay went away

    const second = await relay.next("a reconnect");
    assert.equal(second.headers["Last-Event-ID"], "2");
    const t = relay.stream(second);
    t.send("id: 2\ndata: two\n\nid: 3\ndata: three\n\n"); // 2 again: a replay overlap
    await r.until((k, v) => k == "event" && v.data == "three", "three");
    assert.deepEqual(r.events(), ["one", "two", "three"]);
    const one = r.seen.find(([k]) => k == "event")[1];
    assert.deepEqual(one, { type: "chat", data: "one", id: "1", lastEventId: "1", channel: "lobby" });
    assert.equal(sub.lastEventId, "3");
  } finally {
    sub.close();
  }
});

test("holes in durable ids go to onGap; the relay's missed event to onMissed", async () => {
  const relay = new ScriptedRelay();
  const r = recorder();
  const sub = subscribe(BASE, {
    channels: ["b", "a"],
    lastEventId: "4.10",
    fetch: relay.fetch,
    ...r.options,
  });
  try {
    const request = await relay.next();
    assert.equal(request.url, `${BASE}/events?channel=b&channel=a`);
    assert.equal(request.headers["Last-Event-ID"], "4.10");
    const s = relay.stream(request);
    const missed = { channel: "b", after: 10, resumed_at: 20, reason: "retention" };
    s.send(`event: missed\ndata: ${JSON.stringify(missed)}\n\n`);
    s.send("id: 4.21\ndata: after the hole\n\nid: 6.21\ndata: a skipped 5\n\n");
    const gap = await r.until((k) => k == "gap", "a gap in a");
    assert.deepEqual(gap, { channel: "a", after: "4", next: "6" });
    assert.deepEqual(await r.until((k) => k == "missed", "missed"), missed);
    assert.equal(r.seen.filter(([k]) => k == "gap").length, 1, "missed explains b's jump");
    const events = r.seen.filter(([k]) => k == "event").map(([, v]) => [v.channel, v.data]);
    assert.deepEqual(events, [
      ["b", "after the hole"],
      ["a", "a skipped 5"],
    ]);
  } finally {
    sub.close();
  }
});

test("the token is asked before every connection and sent only in a header", async () => {
  const relay = new ScriptedRelay();
  const r = recorder();
  let asked = 0;
  const sub = subscribe(BASE, {
    channels: "private",
    token: async () => `token-${++asked}`,
    fetch: relay.fetch,
    ...r.options,
  });
  try {
    const first = await relay.next();
    assert.equal(first.headers.Authorization, "Bearer token-1");
    relay.refuse(first, 401, "token has expired", { "WWW-Authenticate": "Bearer" });
    const second = await relay.next("a retry with a new token");
    assert.equal(second.headers.Authorization, "Bearer token-2");
    const s = relay.stream(second);
    s.end();
    const third = await relay.next("a reconnect");
    assert.equal(third.headers.Authorization, "Bearer token-3");
    for (const req of relay.requests) assert.ok(!req.url.includes("token"), req.url);
  } finally {
    sub.close();
  }
});

function jwt(seconds) {
  const now = Date.now() / 1e3;
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part({ iat: now, exp: now + seconds })}.sig`;
}

test("before a token expires, a fresh one is fetched and the stream resumes on it", async () => {
  const relay = new ScriptedRelay();
  const r = recorder();
  const tokens = [jwt(2), jwt(3600)]; // 2 s: refreshed after 1.6 s
  const sub = subscribe(BASE, {
    channels: "c",
    token: () => tokens.shift(),
    fetch: relay.fetch,
    ...r.options,
  });
  try {
    const first = await relay.next();
    const s = relay.stream(first);
    s.send("id: 7\ndata: x\n\n");
    await r.until((k, v) => k == "event" && v.data == "x", "x");
    const second = await relay.next("a reconnect before expiry");
    assert.ok(first.aborted, "the old stream is closed");
    assert.match(second.headers.Authorization, /^Bearer /);
    assert.notEqual(second.headers.Authorization, first.headers.Authorization);
    assert.equal(second.headers["Last-Event-ID"], "7");
  } finally {
    sub.close();
  }
});

test("503 with Retry-After is retried after it; 403 stops and says why", async () => {
  const relay = new ScriptedRelay();
  const r = recorder();
  const sub = subscribe(BASE, { channels: "c", fetch: relay.fetch, ...r.options });
  const first = await relay.next();
  relay.refuse(first, 503, "relay is shutting down", { "Retry-After": "1" });
  const waiting = await r.until((k, v) => k == "status" && v.state == "reconnecting", "wait");
  assert.ok(waiting.delay >= 1000 && waiting.delay <= 1250, waiting.delay);
  const error = r.seen.find(([k, v]) => k == "status" && v.state == "error")[1];
  assert.deepEqual(error, {
    state: "error",
    leader: true,
    status: 503,
    error: "relay is shutting down",
  });
  const second = await relay.next("the retry");
  relay.refuse(second, 403, "token does not allow channel 'c'");
  const closed = await r.until((k, v) => k == "status" && v.state == "closed", "closed");
  assert.equal(closed.status, 403);
  sub.close();
  assert.equal(relay.requests.length, 2, "no retry after 403");
});

test("offline pauses, online reconnects at once; close() aborts the stream", async () => {
  const target = new EventTarget();
  const saved = [globalThis.addEventListener, globalThis.removeEventListener];
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  const relay = new ScriptedRelay();
  const r = recorder();
  const sub = subscribe(BASE, { channels: "c", fetch: relay.fetch, ...r.options });
  try {
    const first = await relay.next();
    relay.stream(first).send("id: 1\ndata: a\n\n");
    await r.until((k, v) => k == "event", "a");
    target.dispatchEvent(new Event("offline"));
    assert.ok(first.aborted);
    await r.until((k, v) => k == "status" && v.state == "offline", "offline");
    target.dispatchEvent(new Event("online"));
    const second = await relay.next("a connection once online");
    assert.equal(second.headers["Last-Event-ID"], "1");
    relay.stream(second);
    sub.close();
    assert.ok(second.aborted, "close() ends the stream");
    assert.equal(r.seen.at(-1)[1].state, "closed");
  } finally {
    sub.close();
    [globalThis.addEventListener, globalThis.removeEventListener] = saved;
  }
});

test("a handler that throws does not stop the stream", async () => {
  const relay = new ScriptedRelay();
  const errors = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (err) => errors.push(err.message); // as browsers have it
  const got = [];
  const sub = subscribe(BASE, {
    channels: "c",
    fetch: relay.fetch,
    onEvent: (e) => {
      got.push(e.data);
      if (e.data == "boom") throw new Error("handler failed");
    },
  });
  try {
    const s = relay.stream(await relay.next());
    s.send("id: 1\ndata: boom\n\nid: 2\ndata: after\n\n");
    await within(
      (async () => {
        while (got.length < 2 || !errors.length) await new Promise((r) => setTimeout(r, 5));
      })(),
      "both events, and the error reported",
    );
    assert.deepEqual(got, ["boom", "after"]);
    assert.deepEqual(errors, ["handler failed"]);
  } finally {
    sub.close();
    globalThis.reportError = saved;
  }
});

test("a revoked token: status revoked, no event, and the reconnect asks for a new token", async () => {
  const relay = new ScriptedRelay();
  const r = recorder();
  let asked = 0;
  const sub = subscribe(BASE, {
    channels: "private",
    token: async () => `token-${++asked}`,
    fetch: relay.fetch,
    ...r.options,
  });
  try {
    const first = await relay.next();
    const s = relay.stream(first);
    await r.until((k, v) => k == "status" && v.state == "live", "live");
    s.send('retry: 50\nevent: sserelay.revoked\ndata: {"reason": "revoked"}\n\n');
    await r.until((k, v) => k == "status" && v.state == "revoked", "revoked");
    s.end(); // the relay ends a revoked stream
    const second = await relay.next("a reconnect");
    assert.equal(second.headers.Authorization, "Bearer token-2");
    assert.deepEqual(r.events(), []);
  } finally {
    sub.close();
  }
});
