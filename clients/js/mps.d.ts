// TypeScript declarations for mps.js, the browser SDK of mps (docs/sdk.md).

/** A pushed message: the `Message` of a push frame (docs/protocol.md, `Type` 3). */
export interface Message {
  /** Server-assigned decimal id, increasing with time; larger than 2^53, so a string. */
  id: string;
  title?: string;
  type: number;
  component?: string;
  topic?: string;
  sender?: string;
  /** Unix milliseconds. */
  created: number;
  /** True for a directed message; the SDK acknowledges it unless `autoAck` is false. */
  ack?: boolean;
  /** The business content, exactly as the back end sent it. */
  EventData: { ext: unknown };
}

export type Transport = 'websocket' | 'sse' | 'poll';

export interface ProtocolError {
  code: string;
  message: string;
  /** For `ack_failed`: the ids that could not be acknowledged. */
  ids?: string[];
}

export interface ConnectOptions {
  /** WebSocket URL, e.g. `wss://push.example.com/ws`; default `ws(s)://<page host>/ws`. */
  url?: string;
  /** HTTP base for /sse, /poll and /api/v1/ack; default derived from `url`. */
  httpUrl?: string;
  /** A client token, or a function returning one (called on every connect). */
  token: string | (() => string | Promise<string>);
  /** Topic patterns: `alarms/site1/room2`, `alarms/+/room2`, `alarms/#`. */
  topics?: string[];
  /** Components whose component-wide messages the client wants (`componentSet`). */
  components?: string[];
  /** `bs` (default), `cs`, `ios`, `android`, ... */
  agent?: string;
  device?: string;
  /** Must equal the token's user when given. */
  user?: string;
  /** Resume topics after this id (e.g. kept in sessionStorage across page loads). */
  lastId?: string;
  /** Order to try transports in; default `['websocket', 'sse', 'poll']`. */
  transports?: Transport[];
  /** Milliseconds: the first retry waits up to `backoffBase`, none waits more than `backoffCap`. */
  backoffBase?: number;
  backoffCap?: number;
  /** Failures in a row, without ever opening, before the next transport is tried (default 2). */
  fallbackAfter?: number;
  /** Seconds between `Type` 5 pings on WebSocket (default 25). */
  heartbeat?: number;
  /** Seconds of silence after which a WebSocket is taken for dead (default 60). */
  timeout?: number;
  /** Seconds to wait for a connection to open (default 10). */
  openTimeout?: number;
  /** Seconds a long poll waits on the server (default 25, at most 60). */
  pollTimeout?: number;
  /** How many recent ids to remember to drop duplicates (default 1000). */
  dedupSize?: number;
  /** Acknowledge directed messages automatically (default true). */
  autoAck?: boolean;
  /** Injected constructors and functions (tests, non-browser hosts). */
  WebSocket?: unknown;
  EventSource?: unknown;
  fetch?: typeof fetch;
  random?: () => number;
}

export interface OpenEvent {
  transport: Transport;
  /** The WebSocket `Session` (`id`, `user`, `heartbeat`, `timeout`...); null on SSE and polling. */
  session: Record<string, unknown> | null;
}

export interface CloseEvent {
  transport: Transport;
  code?: number;
  reason: string;
  /** Whether this connection had opened before it closed. */
  opened: boolean;
}

export interface ResetEvent {
  /** Patterns whose retained history no longer reached back to the resume id. */
  topics: string[];
  error?: ProtocolError;
}

export interface TransportEvent {
  from: Transport;
  to: Transport;
}

export interface EventMap {
  message: Message;
  open: OpenEvent;
  close: CloseEvent;
  error: ProtocolError;
  reset: ResetEvent;
  transport: TransportEvent;
}

export interface Client {
  /** Listen to an event; returns a function that removes the listener. */
  on<K extends keyof EventMap>(event: K, fn: (value: EventMap[K]) => void): () => void;
  /** Replace topic patterns and/or components; new topics apply from now on. */
  subscribe(subscriptions: { topics?: string[]; components?: string[] }): void;
  /** Acknowledge directed messages (only needed with `autoAck: false`). */
  ack(ids: string | string[]): void;
  /** Stop for good: no more messages, no reconnect. */
  close(): void;
  /** The transport in use or being tried. */
  readonly transport: Transport;
  /** The greatest message id seen: where a reconnect resumes. */
  readonly lastId: string | null;
  /** True while a connection is open. */
  readonly connected: boolean;
}

export function connect(options: ConnectOptions): Client;

/** Compare decimal id strings: -1, 0 or 1. */
export function compareIds(a: string, b: string): -1 | 0 | 1;
/** Full-jitter exponential backoff in milliseconds: uniform in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt: number, base: number, cap: number, random?: () => number): number;
/** The HTTP base of a WebSocket URL: `wss://h/p/ws` gives `https://h/p`. */
export function httpBase(wsUrl: string): string;

/** The last `size` ids seen. */
export class RecentIds {
  constructor(size: number);
  /** True when `id` was not seen before (and remembers it). */
  add(id: string): boolean;
}

/** A device registration (push mode) as the server returns it (`POST /api/v1/devices`). */
export interface DeviceRegistration {
  app: string;
  user: string;
  agent: string;
  device: string;
  way: 'apns' | 'fcm' | 'webpush';
  token: string;
  components: string[];
  /** Unix milliseconds of the last registration or refresh. */
  refreshed: number;
}

export interface PushOptions {
  /** A client token, or a function returning one. */
  token: string | (() => string | Promise<string>);
  /** HTTP base of mps (`https://push.example.com`); or give the WebSocket `url`. Default: the page's origin. */
  httpUrl?: string;
  url?: string;
  /** This browser's device id; default `deviceId()`. Give connect() the same one. */
  device?: string;
  /** Script URL of the page's service worker, registered here; or pass `registration`. Default: `navigator.serviceWorker.ready`. */
  serviceWorker?: string;
  registration?: ServiceWorkerRegistration;
  scope?: string;
  /** Only messages of these components are pushed (default all). */
  components?: string[];
  /** Default `bs`. */
  agent?: string;
  /** The app whose VAPID key to use (default the server's `default`). */
  app?: string;
  /** Injected for tests and other hosts. */
  navigator?: unknown;
  PushManager?: unknown;
  fetch?: typeof fetch;
  storage?: Pick<Storage, 'getItem' | 'setItem'>;
}

/** Errors of subscribePush() and unsubscribePush() carry the server's code (`not_configured`, `invalid_subscription`...) or `unsupported`. */
export interface PushError extends Error {
  code: string;
}

/** Web Push on: service worker, PushManager.subscribe with mps's VAPID key, POST /api/v1/devices. */
export function subscribePush(options: PushOptions): Promise<{ registration: DeviceRegistration; subscription: PushSubscription }>;
/** Web Push off: unsubscribe, DELETE /api/v1/devices; true when a push mode was on. */
export function unsubscribePush(options: PushOptions): Promise<boolean>;
/** A stable id for this browser, kept in localStorage (`mps.device`). */
export function deviceId(storage?: Pick<Storage, 'getItem' | 'setItem'>): string;
/** The bytes of a base64url string. */
export function base64UrlBytes(text: string): Uint8Array;
