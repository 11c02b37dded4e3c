// TypeScript declarations of sserelay.js (the browser client of sserelay); see docs/browser.md.

/** The version of this client. */
export declare const version: string;

/** An event, as `EventSource` would give it, plus the channel it came on. */
export interface SseRelayEvent {
  /** The event name (`event:`), `"message"` when the relay sent none. */
  type: string;
  /** The data, lines joined with `"\n"`. */
  data: string;
  /** The id this event carried (`id:`), or null (non-durable events carry none). */
  id: string | null;
  /** The stream's last id so far, as `EventSource`'s `lastEventId`. */
  lastEventId: string;
  /** The channel: always for a one-channel stream; for several, when the id says which. */
  channel?: string;
}

/** A hole in a channel's durable ids: events after `after` and before `next` never came. */
export interface SseRelayGap {
  channel: string | undefined;
  after: string;
  next: string;
}

/** The relay's `missed` event: events after `after` are gone; the stream goes on after `resumed_at`. */
export interface SseRelayMissed {
  channel: string;
  after: number | string;
  resumed_at: number | string;
  reason: "retention" | "too many events" | string;
}

export interface SseRelayStatus {
  /**
   * `connecting`, `live` (the relay said `: ready`), `reconnecting` (with `delay` ms),
   * `offline` (waits for the `online` event), `error` (with `status` and the relay's `error`,
   * or a network `error`; a reconnect follows unless `closed` does), `revoked` (the relay
   * withdrew the token: the stream ends and the reconnect asks `token` anew), `closed`.
   */
  state: "connecting" | "live" | "reconnecting" | "offline" | "error" | "revoked" | "closed";
  /** True in the tab that holds the stream (always, unless `shared`). */
  leader: boolean;
  /** The HTTP status of a refusal (`error`, and `closed` after a 403 or 400). */
  status?: number;
  /** The relay's reason (`{"error": ...}`) or the network error. */
  error?: unknown;
  /** Milliseconds until the next attempt (`reconnecting`). */
  delay?: number;
}

export interface SubscribeOptions {
  /** One channel or several; then `url` is the relay's base URL. Without it `url` is a stream URL. */
  channels?: string | string[];
  /** A token, or a function returning one (maybe async); asked before every connection and
   * again before the current token expires. Sent as `Authorization: Bearer` (EventSource
   * fallback: `?token=`). */
  token?: string | null | (() => string | null | Promise<string | null>);
  /** Start after this id (a durable id the page already shows). */
  lastEventId?: string;
  /** Start with the last N events, when there is no id to resume from. */
  history?: number;
  onEvent?: (event: SseRelayEvent) => void;
  onGap?: (gap: SseRelayGap) => void;
  /** The relay's `missed` event (without this handler it goes to `onEvent`). */
  onMissed?: (missed: SseRelayMissed) => void;
  onStatus?: (status: SseRelayStatus) => void;
  /** Share one stream among the tabs of this origin that subscribe to the same URL. */
  shared?: boolean;
  /** EventSource fallback only: the event names to listen to (besides `message` and `missed`). */
  events?: string[];
  /** `fetch`'s credentials mode (default `"same-origin"`); `"include"` sends cookies cross-origin. */
  credentials?: RequestCredentials;
  /** Force a transport; by default fetch streaming where the browser has it. */
  transport?: "fetch" | "eventsource";
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
}

export interface Subscription {
  /** End everything: the stream, timers, the shared-tab election. */
  close(): void;
  /** The position to resume from (what `Last-Event-ID` would carry). */
  readonly lastEventId: string;
}

export declare function subscribe(url: string, options?: SubscribeOptions): Subscription;
