// shared: true in Node: the tab election over Web Locks (a small in-process lock manager
// with the same semantics: one holder per name, waiters in order, abortable requests) and
// Node's own BroadcastChannel. Chromium runs the real thing in tests/test_browser_client.py.

import { test } from "node:test";
import assert from "node:assert/strict";
import { subscribe } from "../src/sserelay.js";
import { ScriptedRelay, within } from "./scripted.js";

class Locks {
  constructor() {
    this.waiting = [];
    this.held = false;
  }

  request(name, options, callback) {
    return new Promise((resolve, reject) => {
      const entry = { callback, resolve, reject };
      options.signal?.addEventListener("abort", () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new DOMException("aborted", "AbortError"));
      });
      this.waiting.push(entry);
      this.grant();
    });
  }

  async grant() {
    if (this.held || !this.waiting.length) return;
    const entry = this.waiting.shift();
    this.held = true;
    try {
      entry.resolve(await entry.callback());
    } finally {
      this.held = false;
      this.grant();
    }
  }
}

test("tabs share one stream; when the leader closes the next resumes from its own id", async () => {
  Object.defineProperty(globalThis, "navigator", {
    value: { locks: new Locks() },
    configurable: true,
  });
  const relay = new ScriptedRelay();
  const tabs = [0, 1, 2].map(() => {
    const got = [];
    const statuses = [];
    const sub = subscribe("http://relay.test", {
      channels: "c",
      shared: true,
      fetch: relay.fetch,
      onEvent: (e) => got.push(e.data),
      onStatus: (s) => statuses.push(s),
    });
    return { sub, got, statuses };
  });
  const until = (predicate, what) =>
    within(
      (async () => {
        while (!predicate()) await new Promise((r) => setTimeout(r, 5));
      })(),
      what,
    );
  try {
    const first = await relay.next();
    const s = relay.stream(first);
    s.send("id: 1\ndata: one\n\nid: 2\ndata: two\n\n");
    await until(() => tabs.every((t) => t.got.length == 2), "every tab has both events");
    assert.equal(relay.requests.length, 1, "one stream for three tabs");
    await until(
      () => tabs.slice(1).every((t) => t.statuses.at(-1)?.state == "live"),
      "the other tabs hear the leader's status",
    );
    assert.equal(tabs[1].statuses.at(-1).leader, false);

    tabs[0].sub.close(); // the leader goes
    const second = await relay.next("the next tab takes over");
    assert.ok(first.aborted);
    assert.equal(second.headers["Last-Event-ID"], "2");
    relay.stream(second).send("id: 2\ndata: two\n\nid: 3\ndata: three\n\n");
    await until(() => tabs.slice(1).every((t) => t.got.length == 3), "the rest get three");
    for (const t of tabs.slice(1)) assert.deepEqual(t.got, ["one", "two", "three"]);
    assert.equal(relay.requests.length, 2);
  } finally {
    for (const t of tabs) t.sub.close();
    delete globalThis.navigator;
  }
});
