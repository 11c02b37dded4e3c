// sserelay.js: the browser client of sserelay. One ES module, no dependencies, no build step.
//
//   import { subscribe } from "/sserelay.js";
//   const sub = subscribe("https://relay.example.com", { channels: ["lobby"], token, onEvent });
//
// It streams with fetch (so a token goes in an Authorization header, never in a URL),
// refreshes the token before it expires, resumes with Last-Event-ID after any drop (with
// jittered backoff), drops duplicates, reports holes in durable ids (onGap) and the relay's
// `missed` event (onMissed), pauses while offline, and with `shared: true` lets the tabs of
// one origin share one stream. Without fetch streaming it falls back to EventSource.
// The API and its behaviour: docs/browser.md.

export const version = "0.1.0";

const MAX_DELAY = 30e3; // the longest backoff between two attempts, ms

/** A code point comparison of two strings: the relay orders channels as Python's sorted(). */
const byCodePoint = (a, b) => {
  a = [...a];
  b = [...b];
  for (let i = 0; ; i++) {
    if (i == a.length || i == b.length) return a.length - b.length;
    const d = a[i].codePointAt(0) - b[i].codePointAt(0);
    if (d) return d;
  }
};

/** Compare two positions: "42" (PostgreSQL) or "1718000000000-3" (Redis). */
export const compareIds = (a, b) => {
  a = a.split("-");
  b = b.split("-");
  for (let i = 0; i < 2; i++) {
    const x = a[i] || "0",
      y = b[i] || "0";
    if (x != y) return x.length - y.length || (x < y ? -1 : 1);
  }
  return 0;
};

/**
 * An SSE parser as the WHATWG spec reads a stream: `feed(text)` with decoded text as it
 * comes; `onEvent(type, data, ownId, lastId)` for every event (ownId: the id the event itself
 * set, or null), `onComment(text)`, `onRetry(ms)`.
 */
export function parser(onEvent, onComment, onRetry) {
  let buffer = "",
    data = [],
    type = "",
    ownId = null,
    lastId = "";
  const line = (text) => {
    if (!text) {
      if (data.length) onEvent(type || "message", data.join("\n"), ownId, lastId);
      data = [];
      type = "";
      ownId = null;
      return;
    }
    const colon = text.indexOf(":");
    if (!colon) return onComment(text.slice(1).trim());
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value[0] == " ") value = value.slice(1);
    if (field == "data") data.push(value);
    else if (field == "event") type = value;
    else if (field == "id" && !value.includes("\0")) ownId = lastId = value;
    else if (field == "retry" && /^\d+$/.test(value)) onRetry(+value);
  };
  return {
    feed(text) {
      buffer += text;
      let m;
      // A CR at the very end may be the first half of a CRLF: wait for the next chunk.
      while ((m = /\r\n|\r(?=[^])|\n/.exec(buffer))) {
        line(buffer.slice(0, m.index));
        buffer = buffer.slice(m.index + m[0].length);
      }
    },
    reset() {
      // A new stream: a half-read line or event of the old one is dropped (as EventSource).
      buffer = "";
      data = [];
      type = "";
      ownId = null;
    },
  };
}

/**
 * Where a stream is in each of its channels, from the ids the relay sends: one position per
 * channel ("42" or "ms-seq"), several joined by "." in code point order of the channel names.
 * `take(id)` -> {dup, channel, gaps} for an event's own id; ids of another form are opaque.
 */
export function positions(channels, initial) {
  const names = [...new Set(channels)].sort(byCodePoint);
  let at = null, // positions, in `names` order, or null before the first parseable id
    last = "";
  const parse = (id) => {
    const parts = id.split(".");
    return (!names.length || parts.length == names.length) &&
      parts.every((p) => /^\d+(-\d+)?$/.test(p))
      ? parts
      : null;
  };
  const self = {
    get id() {
      return at ? at.join(".") : last;
    },
    take(id) {
      const parts = parse(id);
      if (!parts) {
        last = id;
        at = null;
        return {};
      }
      if (!at) {
        at = parts;
        return { channel: names.length == 1 ? names[0] : undefined };
      }
      let channel,
        moved = false;
      const gaps = [];
      parts.forEach((p, i) => {
        if (compareIds(p, at[i]) > 0) {
          moved = true;
          channel = names[i];
          if (!p.includes("-") && !at[i].includes("-") && BigInt(p) - BigInt(at[i]) > 1n)
            gaps.push({ channel: names[i], after: at[i], next: p });
          at[i] = p;
        }
      });
      return moved ? { channel, gaps } : { dup: true };
    },
    /** The relay said events after `after` are gone: the stream goes on from `resumedAt`. */
    skip(channel, resumedAt) {
      const i = names.indexOf(channel);
      if (at && i >= 0) at[i] = String(resumedAt);
    },
  };
  if (initial) self.take(String(initial));
  return self;
}

/** The `exp` and `iat` claims of a JWT (seconds), or {} if it is not one. */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const { exp, iat } = JSON.parse(atob(part));
    return { exp: +exp || 0, iat: +iat || 0 };
  } catch {
    return {};
  }
}

/** Milliseconds until a token should be replaced (a fifth of its life early, at most a
 * minute), or null if it has no usable expiry. Its lifetime counts, not only the clock. */
export function refreshDelay(token, now = Date.now()) {
  const { exp, iat } = claims(token);
  if (!exp) return null;
  let left = exp * 1e3 - now;
  if (iat && exp > iat) left = Math.min(left > 0 ? left : Infinity, (exp - iat) * 1e3);
  return left >= 1e3 ? left - Math.min(left / 5, 60e3) : null;
}

/** Jittered exponential backoff: attempt 0 waits `base`, each next twice as long (capped),
 * each scaled by a random factor in [0.5, 1). */
export const backoff = (base, attempt) =>
  Math.min(base * 2 ** Math.min(attempt, 16), MAX_DELAY) * (0.5 + Math.random() / 2);

/** The stream URL for `channels` under the relay's base URL, or `url` itself. */
export function streamUrl(url, channels) {
  if (!channels.length) return url;
  const base = url.replace(/\/+$/, "");
  const enc = encodeURIComponent;
  return channels.length == 1
    ? `${base}/events/${enc(channels[0])}`
    : `${base}/events?${channels.map((c) => "channel=" + enc(c)).join("&")}`;
}

/** The channels a stream URL names: /events/{channel} or ?channel=a&channel=b. */
function channelsOf(url) {
  try {
    const u = new URL(url, globalThis.location?.href);
    const m = /\/events\/(.+)$/.exec(u.pathname);
    return m ? [decodeURIComponent(m[1])] : u.searchParams.getAll("channel");
  } catch {
    return [];
  }
}

const listen = (target, type, fn) => {
  target?.addEventListener?.(type, fn);
  return () => target?.removeEventListener?.(type, fn);
};

/**
 * Subscribe to a relay's channels. Returns {close(), lastEventId}. Options (all optional
 * but a way to name channels): channels, token, lastEventId, history, onEvent, onGap,
 * onMissed, onStatus, shared, events (EventSource fallback: named events to listen to),
 * credentials (fetch), transport ("fetch" | "eventsource"), fetch.
 */
export function subscribe(url, options = {}) {
  const o = options;
  const target = streamUrl(url, o.channels == null ? [] : [].concat(o.channels));
  const names = channelsOf(target);
  const single = names.length == 1 ? names[0] : undefined;
  const pos = positions(names, o.lastEventId);
  const env = globalThis;
  const doFetch = o.fetch || env.fetch?.bind(env);
  const viaFetch =
    o.transport != "eventsource" && doFetch && env.ReadableStream && env.TextDecoder;
  let gen = 0, // the current connection; a callback of an older one does nothing
    attempt = 0,
    retry = 1e3,
    timer,
    stop, // ends the current connection
    state,
    closed = false,
    leader = !o.shared,
    release,
    channel,
    locks;
  const call = (fn, arg) => {
    try {
      fn?.(arg);
    } catch (err) {
      // The page's handler failed: report it (window.onerror, the console), keep the stream.
      const rethrow = (e) =>
        setTimeout(() => {
          throw e;
        });
      (env.reportError || rethrow)(err);
    }
  };
  const status = (s, extra) => {
    state = { state: s, leader, ...extra };
    call(o.onStatus, state);
    if (leader && channel) channel.postMessage({ s: state });
  };

  // What every tab does with an event, whether it came from its own stream or the leader's.
  const handle = (type, data, ownId, lastId) => {
    let taken = {};
    if (ownId != null) {
      taken = pos.take(ownId);
      if (taken.dup) return;
      for (const gap of taken.gaps || []) call(o.onGap, gap);
    }
    if (leader && channel) channel.postMessage({ e: [type, data, ownId, lastId] });
    // The relay withdrew the stream's token: say so; the relay ends the stream, and the
    // reconnect asks `token` for a new one (a fixed token gets 401 and stops).
    if (type == "sserelay.revoked") return status("revoked");
    if (type == "missed") {
      try {
        const info = JSON.parse(data);
        pos.skip(info.channel, info.resumed_at);
        return call(o.onMissed || o.onEvent, o.onMissed ? info : { type, data });
      } catch {
        // not the relay's missed event: an ordinary one
      }
    }
    const from = taken.channel || single;
    call(o.onEvent, { type, data, id: ownId, lastEventId: lastId, channel: from });
  };

  const schedule = (delay, fresh) => {
    clearTimeout(timer);
    if (closed) return;
    if (env.navigator?.onLine === false) return status("offline");
    status("reconnecting", { delay });
    timer = setTimeout(() => connect(fresh), delay);
  };
  const fail = (delay) => schedule(delay ?? backoff(retry, attempt++));

  const getToken = async () =>
    typeof o.token == "function" ? await o.token() : o.token || null;

  async function connect(fresh) {
    const g = ++gen;
    stop?.();
    clearTimeout(timer);
    status("connecting");
    let token;
    try {
      token = fresh ?? (await getToken());
    } catch (error) {
      if (g == gen) status("error", { error }), fail();
      return;
    }
    if (g != gen) return;
    const delay = token && refreshDelay(token);
    if (delay != null) {
      // Replace the token before it expires: fetch a new one, then reconnect with it.
      timer = setTimeout(async () => {
        let next;
        try {
          next = await getToken();
        } catch {
          return; // the stream ends at expiry and the reconnect asks again
        }
        if (g == gen && next) connect(next);
      }, delay);
    }
    (viaFetch ? overFetch : overEventSource)(g, token);
  }

  function overFetch(g, token) {
    const abort = new AbortController();
    stop = () => abort.abort();
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    if (pos.id) headers["Last-Event-ID"] = pos.id;
    const read = parser(
      handle,
      (text) => text == "ready" && ((attempt = 0), status("live")),
      (ms) => (retry = ms),
    );
    const url = o.history != null && !pos.id ? withParams(target, { history: o.history }) : target;
    (async () => {
      const res = await doFetch(url, {
        headers,
        signal: abort.signal,
        cache: "no-store",
        credentials: o.credentials || "same-origin",
      });
      if (g != gen) return;
      if (res.status != 200) return refused(res);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (g != gen) return reader.cancel().catch(() => {});
        if (done) break;
        read.feed(decoder.decode(value, { stream: true }));
      }
      fail(retry); // the relay ended the stream (shutdown, token expiry): come back
    })().catch((error) => {
      if (g == gen) status("error", { error }), fail();
    });
  }

  async function refused(res) {
    let error = "";
    try {
      error = (await res.json()).error;
    } catch {
      // a proxy's page, not the relay's JSON
    }
    const code = res.status;
    const after = +res.headers.get("Retry-After");
    status("error", { status: code, error });
    if (code == 401 && typeof o.token == "function") return fail();
    if (code == 429 || code == 408 || code >= 500)
      return fail(after > 0 ? after * 1e3 * (1 + Math.random() / 4) : undefined);
    close(code); // 400, 403, 404...: retrying cannot help
  }

  function overEventSource(g, token) {
    const params = {};
    if (token) params.token = token;
    if (pos.id) params.lastEventId = pos.id;
    else if (o.history != null) params.history = o.history;
    const source = new env.EventSource(withParams(target, params), {
      withCredentials: o.credentials == "include",
    });
    stop = () => source.close();
    let seen = pos.id;
    const onMessage = (e) => {
      // EventSource keeps the last id across events: an unchanged one was not set by this
      // event (a raw one), so it is not compared.
      const own = e.lastEventId != seen ? e.lastEventId : null;
      seen = e.lastEventId;
      handle(e.type, e.data, own, e.lastEventId);
    };
    for (const name of ["message", "missed", "sserelay.revoked", ...(o.events || [])])
      source.addEventListener(name, onMessage);
    source.onopen = () => {
      attempt = 0;
      status("live");
    };
    source.onerror = () => {
      // Reconnect ourselves, with a fresh token and our own position.
      source.close();
      if (g == gen) status("error", {}), fail();
    };
  }

  function close(code) {
    if (closed) return;
    stop?.();
    clearTimeout(timer);
    gen++;
    status("closed", code ? { status: code } : {});
    closed = true;
    release?.();
    locks?.abort();
    channel?.close();
    offline();
    online();
  }

  const offline = listen(env, "offline", () => {
    if (!leader) return;
    gen++;
    stop?.();
    clearTimeout(timer);
    status("offline");
  });
  const online = listen(env, "online", () => {
    if (leader && !closed && state?.state == "offline") connect();
  });

  if (o.shared && env.navigator?.locks && env.BroadcastChannel) {
    // One stream per origin and URL: the tab holding the lock streams and forwards every
    // event; the others wait for the lock, and the next one takes over from its own position.
    const key = "sserelay " + new URL(target, env.location?.href).href;
    channel = new env.BroadcastChannel(key);
    channel.onmessage = ({ data: m }) => {
      if (leader) return m.hello && state && channel.postMessage({ s: state });
      if (m.e) handle(...m.e);
      if (m.s) call(o.onStatus, (state = { ...m.s, leader: false }));
    };
    locks = new AbortController();
    env.navigator.locks
      .request(key, { signal: locks.signal }, () => {
        if (closed) return;
        leader = true;
        connect();
        return new Promise((resolve) => (release = resolve));
      })
      .catch(() => {}); // aborted by close()
    channel.postMessage({ hello: 1 });
  } else {
    leader = true;
    connect();
  }
  return {
    close: () => close(),
    get lastEventId() {
      return pos.id;
    },
  };
}

function withParams(url, params) {
  const u = new URL(url, globalThis.location?.href);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.href;
}
