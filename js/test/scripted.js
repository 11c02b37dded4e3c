// A fetch that answers as the relay would, scripted by the test; and a deadline helper.

/** A fetch whose answers the test writes: `next()` waits for the next request. */
export class ScriptedRelay {
  constructor() {
    this.requests = [];
    this.waiting = [];
    this.fetch = (url, init) =>
      new Promise((resolve, reject) => {
        const request = { url, headers: init.headers, resolve, reject, signal: init.signal };
        init.signal.addEventListener("abort", () => {
          request.aborted = true;
          request.controller?.error(new DOMException("aborted", "AbortError"));
          reject(new DOMException("aborted", "AbortError"));
        });
        this.requests.push(request);
        this.waiting.shift()?.(request);
      });
  }

  next(what = "a request") {
    const pending = this.requests.find((r) => !r.taken);
    const got = pending
      ? Promise.resolve(pending)
      : new Promise((resolve) => this.waiting.push(resolve));
    return within(
      got.then((r) => ((r.taken = true), r)),
      what,
    );
  }

  /** Answer `request` with a stream; returns send(text) and end(). */
  stream(request, first = "retry: 10\n\n: ready\n\n") {
    const encoder = new TextEncoder();
    const body = new ReadableStream({ start: (c) => (request.controller = c) });
    request.resolve(new Response(body, { status: 200 }));
    const send = (text) => request.controller.enqueue(encoder.encode(text));
    send(first);
    return { send, end: () => request.controller.close() };
  }

  refuse(request, status, error, headers = {}) {
    request.resolve(new Response(JSON.stringify({ error }), { status, headers }));
  }
}

export function within(promise, what, ms = 5000) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

