// @ts-check
/**
 * chat-engine.js: a client for the chat engine's WebSocket protocol and HTTP API.
 *
 * One ES module with no dependencies, for browsers and Node.js >= 20 (Node 20 has a
 * global WebSocket only with `--experimental-websocket`; any WHATWG-style WebSocket
 * constructor may be passed in instead).
 *
 * - `ChatEngineClient`: one WebSocket session that keeps its subscriptions across
 *   reconnects. Each channel's `seq` and `epoch` are tracked, so after a reconnect every
 *   channel is resubscribed with `since`/`epoch` and its handler sees every event once,
 *   in `seq` order; when the server can no longer replay what was missed
 *   (`resumed: false`) the handler's `onReset` tells the caller to read the collection
 *   again over HTTP.
 * - `ChatEngineHttp`: a small fetch-based helper for the routes an operator console and
 *   a visitor page use.
 * - `channels`: builders for channel names; `applyEvent`: keeps a Map of a collection's
 *   items up to date from its channel's events.
 *
 * clients/js/README.md describes the surface and the behaviour in detail.
 */

export const VERSION = "1.0.0";

/** The subprotocol of each encoding. */
export const SUBPROTOCOLS = Object.freeze({
  json: "chatengine.v1.json",
  msgpack: "chatengine.v1.msgpack",
});

/** Close codes the server uses, and the one this client uses for its own drops. */
export const CLOSE_CODES = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  NOT_AUTHENTICATED: 4001,
  SLOW_CONSUMER: 4008,
  /** Used by this client when it drops a connection itself (no answer to a ping). */
  CLIENT_DROP: 4000,
});

/** Codes that mean the client itself broke the protocol: retrying at once would loop. */
const CLIENT_BUG_CODES = new Set([1002, 1003, 1007, 1008, 1009]);

const OPEN = 1; // WebSocket.OPEN, without relying on the constructor's statics

// ---------------------------------------------------------------------------------------
// Types

/**
 * @typedef {"added" | "changed" | "removed"} EventAction
 */

/**
 * An event of a channel.
 * @typedef {object} ChatEvent
 * @property {string} channel the channel's name (the collection's path)
 * @property {EventAction} action
 * @property {string} resource_id the chat's, message's or participation's id; a
 *   presence's `user_id`
 * @property {Record<string, any> | null} [resource] `added`: the whole resource;
 *   `changed`: `id`, `updated_at` and the fields that changed; `removed`: absent or null
 * @property {number} seq the event's position in its channel: 1, 2, 3...
 */

/**
 * The server's answer to a subscribe, as handed to `onSubscribed` and `ready`.
 * @typedef {object} SubscribedInfo
 * @property {string} channel
 * @property {number} seq the channel's head when the server answered
 * @property {string | null} epoch the name of the channel history's life
 * @property {boolean} resumed true: the events after `since` were (or will be) replayed
 * @property {number | null} since what the client asked to resume from (null: nothing)
 */

/**
 * Handed to `onReset`: the server could not replay what was missed; the caller must read
 * the collection again (over HTTP). Events after `seq` keep coming.
 * @typedef {object} ResetInfo
 * @property {string} channel
 * @property {number} seq the channel's head: the next event handed over is `seq + 1`
 * @property {string | null} epoch
 * @property {number | null} previousSeq the last seq the client had seen
 * @property {string | null} previousEpoch the epoch it had seen
 * @property {"history" | "epoch"} reason `epoch`: the server's history of the channel is
 *   another one (data lost, e.g. an in-memory restart); `history`: the missed events are
 *   no longer held
 */

/**
 * An error reported by the client.
 * @typedef {object} ClientError
 * @property {"subscription" | "protocol" | "connection" | "handler" | "auth" | "server"} kind
 * @property {string} [code] the server's error code (`forbidden`, `unknown_channel`,
 *   `too_many_subscriptions`, `bad_frame`) or a close code as a string
 * @property {string} [detail]
 * @property {string} [channel]
 * @property {unknown} [error] the underlying exception, when there is one
 */

/**
 * A subscription's handlers. Every one is optional.
 * @typedef {object} SubscribeHandlers
 * @property {(event: ChatEvent) => void} [onEvent] each event of the channel, once, in
 *   seq order, across reconnects
 * @property {(info: ResetInfo) => void} [onReset] the client asked to resume and the
 *   server could not: refetch the collection
 * @property {(info: SubscribedInfo) => void} [onSubscribed] every answer to a
 *   (re)subscribe, before the events it brings
 * @property {(error: ClientError) => void} [onError] the server refused the
 *   subscription (it is then over)
 * @property {number} [since] resume from this seq on the first subscribe (a position
 *   saved earlier); ignored when the channel is already subscribed by this client
 * @property {string} [epoch] the epoch `since` belongs to
 */

/**
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} ConnectionState
 */

/**
 * What `onStateChange` is told besides the state.
 * @typedef {object} StateInfo
 * @property {number} [code] the close code that ended the previous connection
 * @property {string} [reason] its close reason
 * @property {number} [delay] milliseconds before the next attempt ("reconnecting")
 * @property {number} [attempt] how many attempts failed in a row before this one
 * @property {boolean} [authFailed] "closed" because the token stopped working (4001)
 */

/**
 * Handed to `onAuthError`.
 * @typedef {object} AuthErrorInfo
 * @property {number} code 4001
 * @property {string} reason
 */

/**
 * Reconnection back-off: attempt n (0-based) waits a uniformly random time in
 * [0, min(maxDelay, initialDelay * factor^n)] ("full jitter").
 * @typedef {object} BackoffOptions
 * @property {number} [initialDelay] ms (default 500)
 * @property {number} [maxDelay] ms (default 30000)
 * @property {number} [factor] (default 2)
 * @property {number} [resetAfter] a connection that stayed open this long (ms) starts
 *   the back-off over (default 10000)
 */

/**
 * Any WHATWG-style WebSocket constructor: the browser's, Node's, or a compatible one.
 * @typedef {new (url: string, protocols?: string | string[]) => WebSocket} WebSocketConstructor
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} url the `/ws` URL (`ws://host:port/ws` or `wss://...`)
 * @property {string} [token] the token the session authenticates with (sent as
 *   `?token=`)
 * @property {() => (string | Promise<string>)} [getToken] asked for the token before
 *   every connection attempt (e.g. to sign a fresh JWT); wins over `token`
 * @property {WebSocketConstructor} [WebSocket] default: `globalThis.WebSocket`
 * @property {"json" | "msgpack"} [encoding] default "json"
 * @property {BackoffOptions} [backoff]
 * @property {number} [pingInterval] ms between the client's pings (default 25000; 0: no
 *   pings)
 * @property {number} [pongTimeout] ms to wait for anything after a ping before the
 *   connection is taken as dead and replaced (default 10000)
 * @property {boolean} [connect] open at once (default true); false: call `connect()`
 * @property {(state: ConnectionState, info: StateInfo) => void} [onStateChange]
 * @property {(info: AuthErrorInfo) => (string | null | undefined | void | Promise<string | null | undefined | void>)} [onAuthError]
 *   the token stopped working (close 4001). Return (or resolve to) a fresh token to
 *   reconnect with it; anything else leaves the client closed until `setToken()`.
 * @property {(error: ClientError) => void} [onError]
 * @property {() => number} [random] a source of numbers in [0, 1) for the jitter
 *   (default Math.random)
 */

/**
 * @typedef {object} Listener
 * @property {SubscribeHandlers} handlers
 * @property {(info: SubscribedInfo) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {boolean} settled
 */

/**
 * The client's record of one channel.
 * @typedef {object} ChannelState
 * @property {string} channel
 * @property {Set<Listener>} listeners
 * @property {number | null} seq the last event handed over (or the head it started at)
 * @property {string | null} epoch
 * @property {number | null} pendingId the id of the subscribe awaiting its answer
 * @property {ChatEvent[]} buffer events that came before that answer
 * @property {boolean} subscribed the server answered at least once
 */

// ---------------------------------------------------------------------------------------
// The WebSocket client

/** An error of a subscription the server refused, or of a client that was closed. */
export class ChatEngineError extends Error {
  /**
   * @param {string} message
   * @param {string} code
   */
  constructor(message, code) {
    super(message);
    this.name = "ChatEngineError";
    this.code = code;
  }
}

/** What `subscribe` returns. */
export class Subscription {
  #client;
  #state;
  #listener;
  #active = true;

  /**
   * @param {ChatEngineClient} client
   * @param {ChannelState} state
   * @param {Listener} listener
   * @param {Promise<SubscribedInfo>} ready
   */
  constructor(client, state, listener, ready) {
    this.#client = client;
    this.#state = state;
    this.#listener = listener;
    /** The channel's name. */
    this.channel = state.channel;
    /**
     * Settles with the server's first answer: resolves (the subscription holds, and
     * every event after `info.seq` will be handed over), or rejects with a
     * `ChatEngineError` (refused, or the client was closed). Subscribe first, await
     * this, then read the collection over HTTP: no item is then missed.
     * @type {Promise<SubscribedInfo>}
     */
    this.ready = ready;
  }

  /** The seq of the last event handed over (or the head the subscription started at). */
  get seq() {
    return this.#state.seq;
  }

  /** The channel's epoch as last answered. */
  get epoch() {
    return this.#state.epoch;
  }

  /** False once unsubscribed, refused, or the client was closed. */
  get active() {
    return this.#active && this.#state.listeners.has(this.#listener);
  }

  /** Stop receiving this channel's events here (idempotent). */
  unsubscribe() {
    if (!this.#active) return;
    this.#active = false;
    this.#client._unsubscribe(this.#state, this.#listener);
  }
}

/**
 * One WebSocket session to the chat engine that survives disconnections.
 *
 * ```js
 * const client = new ChatEngineClient({ url: "ws://127.0.0.1:8080/ws", token });
 * const sub = client.subscribe(channel, {
 *   onEvent(event) { ... },
 *   onReset(info) { refetch(); },
 * });
 * await sub.ready;   // subscribed: now read the collection over HTTP
 * ...
 * sub.unsubscribe();
 * client.close();
 * ```
 */
export class ChatEngineClient {
  #url;
  /** @type {string | null} */
  #token;
  #getToken;
  #WebSocket;
  /** @type {"json" | "msgpack"} */
  #encoding;
  #backoff;
  #pingInterval;
  #pongTimeout;
  #random;
  #onStateChange;
  #onAuthError;
  #onError;

  /** @type {Map<string, ChannelState>} */
  #channels = new Map();
  /** @type {Map<number, string>} subscribe ids awaiting an answer -> channel */
  #pendingIds = new Map();
  /** @type {WebSocket | null} */
  #ws = null;
  /** @type {ConnectionState} */
  #state = "closed";
  #nextId = 0;
  #attempt = 0;
  /** @type {number | null} when the current socket opened */
  #openedAt = null;
  #lastReceived = 0;
  #stopped = true; // closed by the caller, or by a token that stopped working
  #authStopped = false;
  /** @type {string | null} the token the server last closed with 4001 */
  #revokedToken = null;
  #generation = 0;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #reconnectTimer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #pingTimer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #pongTimer = null;

  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || typeof options.url !== "string" || !options.url) {
      throw new TypeError("ChatEngineClient: `url` (the /ws URL) is required");
    }
    this.#url = options.url;
    this.#token = options.token ?? null;
    this.#getToken = options.getToken ?? null;
    const Ctor = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof Ctor !== "function") {
      throw new TypeError(
        "ChatEngineClient: no WebSocket constructor (pass `WebSocket`, or run Node 20 " +
          "with --experimental-websocket)",
      );
    }
    this.#WebSocket = /** @type {WebSocketConstructor} */ (Ctor);
    const encoding = options.encoding ?? "json";
    if (encoding !== "json" && encoding !== "msgpack") {
      throw new TypeError(`ChatEngineClient: unknown encoding ${String(encoding)}`);
    }
    this.#encoding = encoding;
    const backoff = options.backoff ?? {};
    this.#backoff = {
      initialDelay: positive(backoff.initialDelay, 500),
      maxDelay: positive(backoff.maxDelay, 30000),
      factor: Math.max(1, positive(backoff.factor, 2)),
      resetAfter: positive(backoff.resetAfter, 10000),
    };
    this.#pingInterval = positive(options.pingInterval, 25000);
    this.#pongTimeout = positive(options.pongTimeout, 10000);
    this.#random = options.random ?? Math.random;
    this.#onStateChange = options.onStateChange ?? null;
    this.#onAuthError = options.onAuthError ?? null;
    this.#onError = options.onError ?? null;
    if (options.connect !== false) this.connect();
  }

  /** In a browser: back online, try at once rather than at the end of the back-off. */
  #onOnline = () => this.reconnectNow();

  /** @param {boolean} on */
  #listenForOnline(on) {
    const target = /** @type {any} */ (globalThis);
    if (typeof target.addEventListener !== "function" || typeof target.navigator !== "object") {
      return;
    }
    if (on) target.addEventListener("online", this.#onOnline);
    else target.removeEventListener("online", this.#onOnline);
  }

  /** The connection's state: "connecting", "open", "reconnecting" or "closed". */
  get state() {
    return this.#state;
  }

  /** The encoding of the session ("json" or "msgpack"). */
  get encoding() {
    return this.#encoding;
  }

  /**
   * Open the session (the constructor does, unless `connect: false`); after `close()`
   * or a 4001, opens it again and resumes every subscription. No-op while open or
   * connecting.
   */
  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#authStopped = false;
    this.#attempt = 0;
    this.#setState("connecting", {});
    this.#listenForOnline(true);
    void this.#open();
  }

  /**
   * Use `token` from the next connection on. A client stopped by a token that no longer
   * works (4001) reconnects at once with it; an open session is left alone.
   * @param {string} token
   */
  setToken(token) {
    this.#token = token;
    if (this.#authStopped) this.connect();
  }

  /**
   * While waiting to reconnect ("reconnecting"), try now instead of at the end of the
   * back-off (a "retry now" button; browsers' `online` event does the same). Otherwise
   * nothing.
   */
  reconnectNow() {
    if (this.#stopped || this.#reconnectTimer === null) return;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    void this.#open();
  }

  /**
   * Subscribe to a channel. A channel subscribed several times through one client is one
   * server subscription: each caller gets its own handlers and `Subscription`.
   * @param {string} channel a channel name, such as `channels.roomChats(org, room)`
   * @param {SubscribeHandlers} [handlers]
   * @returns {Subscription}
   */
  subscribe(channel, handlers = {}) {
    if (typeof channel !== "string" || !channel.startsWith("/")) {
      throw new TypeError("subscribe: a channel is a path starting with '/'");
    }
    /** @type {Listener} */
    const listener = {
      handlers,
      resolve: () => {},
      reject: () => {},
      settled: false,
    };
    /** @type {Promise<SubscribedInfo>} */
    const ready = new Promise((resolve, reject) => {
      listener.resolve = resolve;
      listener.reject = reject;
    });
    ready.catch(() => {}); // a caller that never awaits `ready` sees no unhandled rejection
    let state = this.#channels.get(channel);
    if (state === undefined) {
      state = {
        channel,
        listeners: new Set(),
        seq: typeof handlers.since === "number" ? handlers.since : null,
        epoch: typeof handlers.epoch === "string" ? handlers.epoch : null,
        pendingId: null,
        buffer: [],
        subscribed: false,
      };
      this.#channels.set(channel, state);
      state.listeners.add(listener);
      if (this.#isOpen()) this.#sendSubscribe(state);
    } else {
      state.listeners.add(listener);
      if (state.subscribed && state.pendingId === null) {
        settle(listener, {
          channel,
          seq: state.seq ?? 0,
          epoch: state.epoch,
          resumed: true,
          since: state.seq,
        });
      }
    }
    // on a closed client, the subscribe goes out when connect() opens it again
    return new Subscription(this, state, listener, ready);
  }

  /**
   * Close the session for good (the caller's decision): no reconnect, every pending
   * `ready` rejects. `connect()` opens it again.
   */
  close() {
    this.#stopped = true;
    this.#authStopped = false;
    this.#listenForOnline(false);
    this.#clearTimers();
    this.#generation += 1;
    const ws = this.#ws;
    this.#ws = null;
    this.#openedAt = null;
    if (ws !== null) {
      detach(ws);
      try {
        ws.close(CLOSE_CODES.NORMAL, "client closed");
      } catch {
        // already closing
      }
    }
    this.#forgetPending();
    for (const state of this.#channels.values()) {
      for (const listener of state.listeners) {
        rejectListener(listener, new ChatEngineError("The client was closed.", "closed"));
      }
    }
    this.#setState("closed", { code: CLOSE_CODES.NORMAL, reason: "client closed" });
  }

  // -- internals used by Subscription ---------------------------------------------------

  /**
   * @param {ChannelState} state
   * @param {Listener} listener
   * @internal
   */
  _unsubscribe(state, listener) {
    state.listeners.delete(listener);
    rejectListener(listener, new ChatEngineError("Unsubscribed.", "unsubscribed"));
    if (state.listeners.size > 0 || this.#channels.get(state.channel) !== state) return;
    this.#channels.delete(state.channel);
    if (state.pendingId !== null) this.#pendingIds.delete(state.pendingId);
    state.pendingId = null;
    state.buffer = [];
    if (this.#isOpen()) {
      this.#send({ type: "unsubscribe", id: ++this.#nextId, channel: state.channel });
    }
  }

  // -- the connection ----------------------------------------------------------------

  #isOpen() {
    return this.#ws !== null && this.#ws.readyState === OPEN && this.#openedAt !== null;
  }

  /**
   * @param {ConnectionState} state
   * @param {StateInfo} info
   */
  #setState(state, info) {
    const changed = state !== this.#state;
    this.#state = state;
    if (changed || state === "reconnecting") {
      this.#call(() => this.#onStateChange?.(state, info));
    }
  }

  async #open() {
    const generation = ++this.#generation;
    let token = this.#token;
    if (this.#getToken !== null) {
      try {
        token = await this.#getToken();
      } catch (error) {
        if (generation !== this.#generation) return;
        this.#report({ kind: "auth", detail: "getToken failed", error });
        this.#scheduleReconnect({ code: CLOSE_CODES.ABNORMAL, reason: "no token" });
        return;
      }
      if (generation !== this.#generation) return;
      if (typeof token === "string" && token === this.#revokedToken) {
        this.#stopForAuth({ code: CLOSE_CODES.NOT_AUTHENTICATED, reason: "stale token" });
        return;
      }
      this.#token = token;
    }
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this.#WebSocket(withToken(this.#url, token), [SUBPROTOCOLS[this.#encoding]]);
    } catch (error) {
      this.#report({ kind: "connection", detail: "the WebSocket could not be created", error });
      this.#scheduleReconnect({ code: CLOSE_CODES.ABNORMAL, reason: String(error) });
      return;
    }
    if (this.#encoding === "msgpack") ws.binaryType = "arraybuffer";
    this.#ws = ws;
    this.#openedAt = null;
    ws.onopen = () => {
      if (ws === this.#ws) this.#opened();
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#received(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.#ws) this.#closed(event.code, event.reason);
    };
    ws.onerror = () => {
      // Once open, a close event follows and carries what there is to know. A failed
      // handshake may end with no close event at all (Node 20's WebSocket, when the
      // server refuses the upgrade), so that one counts as closed here.
      if (ws === this.#ws && this.#openedAt === null) {
        this.#closed(CLOSE_CODES.ABNORMAL, "the connection could not be opened");
      }
    };
  }

  #opened() {
    this.#openedAt = Date.now();
    this.#lastReceived = this.#openedAt;
    this.#revokedToken = null;
    this.#setState("open", {});
    for (const state of this.#channels.values()) this.#sendSubscribe(state);
    this.#armPing();
  }

  /**
   * The socket closed (or this client gave it up).
   * @param {number} code
   * @param {string} reason
   */
  #closed(code, reason) {
    const ws = this.#ws;
    const openedAt = this.#openedAt;
    this.#ws = null;
    this.#openedAt = null;
    if (ws !== null) detach(ws);
    this.#clearTimers();
    this.#forgetPending();
    if (this.#stopped) return;
    if (openedAt !== null && Date.now() - openedAt >= this.#backoff.resetAfter) {
      this.#attempt = 0;
    }
    if (code === CLOSE_CODES.NOT_AUTHENTICATED) {
      void this.#authFailed(code, reason);
      return;
    }
    if (CLIENT_BUG_CODES.has(code)) {
      // a bug on this side (the server says what in its bad_frame errors): report it
      // and retry only after the longest back-off, never in a hot loop
      this.#report({ kind: "protocol", code: String(code), detail: reason });
      this.#attempt = Math.max(this.#attempt, this.#attemptsToMax());
    }
    this.#scheduleReconnect({ code, reason });
  }

  /** The attempt number whose ceiling is the maximum delay. */
  #attemptsToMax() {
    const { initialDelay, maxDelay, factor } = this.#backoff;
    if (factor <= 1 || initialDelay >= maxDelay) return 0;
    return Math.ceil(Math.log(maxDelay / initialDelay) / Math.log(factor));
  }

  /**
   * The delay before the next attempt: full jitter over an exponential ceiling.
   * @returns {number}
   */
  #nextDelay() {
    const { initialDelay, maxDelay, factor } = this.#backoff;
    const ceiling = Math.min(maxDelay, initialDelay * factor ** this.#attempt);
    this.#attempt += 1;
    return Math.floor(this.#random() * ceiling);
  }

  /** @param {{code: number, reason: string}} closed */
  #scheduleReconnect(closed) {
    if (this.#stopped) return;
    const attempt = this.#attempt;
    const delay = this.#nextDelay();
    this.#setState("reconnecting", { ...closed, delay, attempt });
    this.#clearTimers();
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (!this.#stopped) void this.#open();
    }, delay);
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  async #authFailed(code, reason) {
    const revoked = this.#token;
    this.#revokedToken = revoked;
    this.#report({ kind: "auth", code: String(code), detail: reason });
    if (this.#onAuthError === null) {
      if (this.#getToken !== null) {
        // a token source may hand a fresh one (a stale one stops the client in #open)
        this.#scheduleReconnect({ code, reason });
      } else {
        this.#stopForAuth({ code, reason });
      }
      return;
    }
    const generation = this.#generation;
    this.#stopForAuth({ code, reason });
    /** @type {unknown} */
    let fresh;
    try {
      fresh = await this.#onAuthError({ code, reason });
    } catch (error) {
      this.#report({ kind: "handler", detail: "onAuthError threw", error });
      return;
    }
    if (generation !== this.#generation || !this.#authStopped) return; // the caller acted
    if (typeof fresh === "string" && fresh !== "" && fresh !== revoked) {
      this.#token = fresh;
      this.connect();
    }
  }

  /** @param {{code: number, reason: string}} closed */
  #stopForAuth(closed) {
    this.#stopped = true;
    this.#authStopped = true;
    this.#listenForOnline(false);
    this.#clearTimers();
    this.#setState("closed", { ...closed, authFailed: true });
  }

  /**
   * Give up the current socket at once (it looks dead) and reconnect.
   * @param {string} reason
   */
  #drop(reason) {
    const ws = this.#ws;
    if (ws === null) return;
    try {
      ws.close(CLOSE_CODES.CLIENT_DROP, reason);
    } catch {
      // ignore: it is being replaced anyway
    }
    this.#closed(CLOSE_CODES.CLIENT_DROP, reason);
  }

  #clearTimers() {
    for (const timer of [this.#reconnectTimer, this.#pingTimer, this.#pongTimer]) {
      if (timer !== null) clearTimeout(timer);
    }
    this.#reconnectTimer = this.#pingTimer = this.#pongTimer = null;
  }

  /** Pings keep the session's liveness known on both sides (the server closes a peer
   * silent for 60 s; browsers do answer its WebSocket pings, but a page cannot see
   * them, so the client asks for an answer of its own). */
  #armPing() {
    if (this.#pingInterval <= 0) return;
    if (this.#pingTimer !== null) clearTimeout(this.#pingTimer);
    this.#pingTimer = setTimeout(() => {
      this.#pingTimer = null;
      if (!this.#isOpen()) return;
      const sentAt = Date.now();
      this.#send({ type: "ping", id: ++this.#nextId });
      if (this.#pongTimeout > 0) {
        this.#pongTimer = setTimeout(() => {
          this.#pongTimer = null;
          if (this.#lastReceived < sentAt) this.#drop("no answer to ping");
        }, this.#pongTimeout);
      }
      this.#armPing();
    }, this.#pingInterval);
  }

  #forgetPending() {
    this.#pendingIds.clear();
    for (const state of this.#channels.values()) {
      state.pendingId = null;
      state.buffer = []; // resubscribing with `since` brings them again
    }
  }

  /** @param {Record<string, unknown>} frame */
  #send(frame) {
    const ws = this.#ws;
    if (ws === null || ws.readyState !== OPEN) return;
    try {
      ws.send(this.#encoding === "json" ? JSON.stringify(frame) : msgpackEncode(frame));
    } catch (error) {
      this.#report({ kind: "connection", detail: "send failed", error });
    }
  }

  /** @param {ChannelState} state */
  #sendSubscribe(state) {
    if (state.pendingId !== null) this.#pendingIds.delete(state.pendingId);
    const id = ++this.#nextId;
    state.pendingId = id;
    state.buffer = [];
    this.#pendingIds.set(id, state.channel);
    /** @type {Record<string, unknown>} */
    const frame = { type: "subscribe", id, channel: state.channel };
    if (state.seq !== null) {
      frame.since = state.seq;
      if (state.epoch !== null) frame.epoch = state.epoch;
    }
    this.#send(frame);
  }

  // -- what arrives ------------------------------------------------------------------

  /** @param {unknown} data */
  #received(data) {
    this.#lastReceived = Date.now();
    /** @type {unknown} */
    let frame;
    try {
      frame = this.#decode(data);
    } catch (error) {
      this.#report({ kind: "protocol", detail: "a frame that does not decode", error });
      return;
    }
    const items = Array.isArray(frame) ? frame : [frame];
    for (const item of items) {
      if (this.#ws === null) return; // dropped while handling (a handler closed it)
      if (typeof item !== "object" || item === null) continue;
      this.#handle(/** @type {Record<string, any>} */ (item));
    }
  }

  /**
   * @param {unknown} data
   * @returns {unknown}
   */
  #decode(data) {
    if (typeof data === "string") return JSON.parse(data);
    if (data instanceof ArrayBuffer) return msgpackDecode(new Uint8Array(data));
    if (ArrayBuffer.isView(data)) {
      return msgpackDecode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    throw new TypeError("unexpected frame data");
  }

  /** @param {Record<string, any>} item */
  #handle(item) {
    const type = item.type;
    if (typeof type === "string") {
      if (type === "subscribed") this.#subscribed(item);
      else if (type === "error") this.#serverError(item);
      // "unsubscribed" and "pong" need nothing: any frame proves the session alive
      return;
    }
    if (typeof item.channel === "string" && typeof item.seq === "number") {
      this.#event(/** @type {ChatEvent} */ (/** @type {unknown} */ (item)));
    }
  }

  /** @param {Record<string, any>} answer */
  #subscribed(answer) {
    const id = answer.id;
    if (typeof id !== "number" || !this.#pendingIds.has(id)) return; // a stale answer
    const channel = /** @type {string} */ (this.#pendingIds.get(id));
    this.#pendingIds.delete(id);
    const state = this.#channels.get(channel);
    if (state === undefined || state.pendingId !== id) return;
    state.pendingId = null;
    const since = state.seq;
    const previousEpoch = state.epoch;
    const head = typeof answer.seq === "number" ? answer.seq : 0;
    const epoch = typeof answer.epoch === "string" ? answer.epoch : null;
    const resumed = answer.resumed === true && since !== null;
    if (!resumed) state.seq = head;
    state.epoch = epoch;
    state.subscribed = true;
    /** @type {SubscribedInfo} */
    const info = { channel, seq: head, epoch, resumed, since };
    const buffered = state.buffer;
    state.buffer = [];
    for (const listener of [...state.listeners]) {
      settle(listener, info);
      const onSubscribed = listener.handlers.onSubscribed;
      if (onSubscribed) this.#call(() => onSubscribed(info));
    }
    if (!resumed && since !== null) {
      /** @type {ResetInfo} */
      const reset = {
        channel,
        seq: head,
        epoch,
        previousSeq: since,
        previousEpoch,
        reason: previousEpoch !== null && epoch !== previousEpoch ? "epoch" : "history",
      };
      for (const listener of [...state.listeners]) {
        const onReset = listener.handlers.onReset;
        if (onReset) this.#call(() => onReset(reset));
      }
    }
    buffered.sort((a, b) => a.seq - b.seq);
    for (const event of buffered) {
      if (this.#channels.get(channel) !== state || state.pendingId !== null) return;
      this.#deliver(state, event);
    }
  }

  /** @param {Record<string, any>} answer */
  #serverError(answer) {
    const id = answer.id;
    const code = typeof answer.code === "string" ? answer.code : "error";
    const detail = typeof answer.detail === "string" ? answer.detail : "";
    const channel = typeof id === "number" ? this.#pendingIds.get(id) : undefined;
    if (channel === undefined) {
      this.#report({ kind: "server", code, detail });
      return;
    }
    this.#pendingIds.delete(/** @type {number} */ (id));
    const state = this.#channels.get(channel);
    if (state === undefined || state.pendingId !== id) return;
    // refused: the subscription is over (the server holds nothing of it)
    this.#channels.delete(channel);
    state.pendingId = null;
    state.buffer = [];
    /** @type {ClientError} */
    const error = { kind: "subscription", code, detail, channel };
    this.#report(error);
    for (const listener of [...state.listeners]) {
      rejectListener(listener, new ChatEngineError(`${code}: ${detail}`, code));
      const onError = listener.handlers.onError;
      if (onError) this.#call(() => onError(error));
    }
    state.listeners.clear();
  }

  /** @param {ChatEvent} event */
  #event(event) {
    const state = this.#channels.get(event.channel);
    if (state === undefined) return; // unsubscribed meanwhile
    if (state.pendingId !== null) {
      state.buffer.push(event); // handed over once the answer says where we stand
      return;
    }
    this.#deliver(state, event);
  }

  /**
   * @param {ChannelState} state
   * @param {ChatEvent} event
   */
  #deliver(state, event) {
    if (state.seq !== null && event.seq <= state.seq) return; // seen already
    if (state.seq !== null && event.seq !== state.seq + 1) {
      // a hole: never expected from the server; ask again from what was seen
      this.#report({
        kind: "protocol",
        code: "gap",
        detail: `event ${event.seq} after ${state.seq}: resubscribing`,
        channel: state.channel,
      });
      this.#send({ type: "unsubscribe", id: ++this.#nextId, channel: state.channel });
      this.#sendSubscribe(state);
      return;
    }
    state.seq = event.seq;
    for (const listener of [...state.listeners]) {
      const onEvent = listener.handlers.onEvent;
      if (onEvent) this.#call(() => onEvent(event));
    }
  }

  /** @param {ClientError} error */
  #report(error) {
    const onError = this.#onError;
    if (onError) this.#call(() => onError(error), false);
  }

  /**
   * Run a caller's handler; what it throws goes to `onError`, or, without one, is thrown
   * again outside the client (as an event listener's would be).
   * @param {() => void} fn
   * @param {boolean} [report]
   */
  #call(fn, report = true) {
    try {
      fn();
    } catch (error) {
      if (report && this.#onError) {
        this.#report({ kind: "handler", detail: String(error), error });
      } else {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * @param {Listener} listener
 * @param {SubscribedInfo} info
 */
function settle(listener, info) {
  if (listener.settled) return;
  listener.settled = true;
  listener.resolve(info);
}

/**
 * @param {Listener} listener
 * @param {Error} error
 */
function rejectListener(listener, error) {
  if (listener.settled) return;
  listener.settled = true;
  listener.reject(error);
}

/** @param {WebSocket} ws */
function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {};
}

/**
 * @param {number | undefined} value
 * @param {number} fallback
 */
function positive(value, fallback) {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : fallback;
}

/**
 * The /ws URL with `token` as its `token` query parameter (a relative or http(s) URL is
 * made absolute, ws(s)).
 * @param {string} url
 * @param {string | null} token
 */
function withToken(url, token) {
  const parsed = new URL(url, globalThis.location?.href);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (token !== null && token !== "") parsed.searchParams.set("token", token);
  return parsed.toString();
}

// ---------------------------------------------------------------------------------------
// Channels and collections

/** Builders of channel names: each is the path of the collection it mirrors. */
export const channels = Object.freeze({
  /** @param {string} visitorId */
  visitorChats: (visitorId) => `/api/v5/client/visitors/${visitorId}/chats`,
  /** @param {string} orgId @param {string} userId */
  userChats: (orgId, userId) => `/api/v5/orgs/${orgId}/users/${userId}/chats`,
  /** @param {string} orgId @param {string} roomId */
  roomChats: (orgId, roomId) => `/api/v5/orgs/${orgId}/rooms/${roomId}/chats`,
  /** @param {string} orgId @param {string} userId */
  currentChats: (orgId, userId) => `/api/v5/orgs/${orgId}/users/${userId}/current_chats`,
  /** @param {string} orgId @param {string} userId @param {string} chatId */
  currentPresences: (orgId, userId, chatId) =>
    `/api/v5/orgs/${orgId}/users/${userId}/current_chats/${chatId}/presences`,
  /**
   * A chat's sub-collection under a chats channel: `chatCollection` is a visitor chats,
   * user chats or room chats channel.
   * @param {string} chatCollection
   * @param {string} chatId
   * @param {"messages" | "presences" | "participations"} what
   */
  chatSub: (chatCollection, chatId, what) => `${chatCollection}/${chatId}/${what}`,
});

/**
 * Apply a channel's event to a Map of the collection's items, keyed by `resource_id`
 * (a presence's `user_id`, every other resource's `id`). `added` stores the resource,
 * `changed` merges its fields into the stored item (ignored when the item is unknown:
 * it was not read yet), `removed` deletes it.
 * @template {Record<string, any>} T
 * @param {Map<string, T>} items
 * @param {ChatEvent} event
 * @returns {boolean} whether the Map changed
 */
export function applyEvent(items, event) {
  const key = event.resource_id;
  if (event.action === "removed") return items.delete(key);
  const resource = /** @type {T | null | undefined} */ (event.resource);
  if (resource == null) return false;
  if (event.action === "added") {
    items.set(key, resource);
    return true;
  }
  const current = items.get(key);
  if (current === undefined) return false;
  items.set(key, /** @type {T} */ ({ ...current, ...resource }));
  return true;
}

// ---------------------------------------------------------------------------------------
// HTTP

/** A non-2xx answer of the HTTP API: `{code, detail, errors?}` and the status. */
export class ChatEngineHttpError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} detail
   * @param {Record<string, string[]> | undefined} errors
   * @param {number | null} retryAfter seconds (429, 503)
   */
  constructor(status, code, detail, errors, retryAfter) {
    super(`${status} ${code}: ${detail}`);
    this.name = "ChatEngineHttpError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.errors = errors;
    this.retryAfter = retryAfter;
  }
}

/**
 * A cursor-paginated collection page.
 * @template T
 * @typedef {object} Page
 * @property {string | null} next absolute URL of the next page
 * @property {string | null} previous absolute URL of the previous page
 * @property {T[]} results
 */

/**
 * @typedef {Record<string, string | number | boolean | null | undefined>} Query
 */

/**
 * @typedef {Record<string, any>} Json
 */

/**
 * @typedef {object} HttpOptions
 * @property {string} [baseUrl] e.g. `http://127.0.0.1:8080`; empty: the page's own origin
 * @property {string} [token] sent as `Authorization: Token <token>`
 * @property {typeof fetch} [fetch] default: `globalThis.fetch`
 */

/**
 * The HTTP routes an operator console and a visitor page use. Bodies and query
 * parameters are the API's own (snake_case), answers are its JSON. A non-2xx answer
 * throws a `ChatEngineHttpError`.
 */
export class ChatEngineHttp {
  #baseUrl;
  #fetch;

  /** @param {HttpOptions} [options] */
  constructor(options = {}) {
    this.#baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    /** The token of every request (may be changed at any time). @type {string | null} */
    this.token = options.token ?? null;
    const fetchFn = options.fetch ?? globalThis.fetch;
    if (typeof fetchFn !== "function") throw new TypeError("ChatEngineHttp: no fetch");
    this.#fetch = fetchFn.bind(globalThis);
  }

  /**
   * The `/ws` URL of the same server (for `ChatEngineClient`).
   * @returns {string}
   */
  wsUrl() {
    const base = this.#baseUrl || globalThis.location?.origin || "";
    const url = new URL("/ws", base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  /**
   * One request. `path` is an API path (`/api/v5/...`) or an absolute URL (a page link).
   * @param {string} method
   * @param {string} path
   * @param {{query?: Query, body?: unknown, token?: string | null}} [options]
   * @returns {Promise<any>} the JSON answer; null for 204
   */
  async request(method, path, options = {}) {
    let url = /^https?:/.test(path) ? path : this.#baseUrl + path;
    const query = options.query;
    if (query) {
      const params = new URLSearchParams();
      for (const [name, value] of Object.entries(query)) {
        if (value !== undefined && value !== null) params.set(name, String(value));
      }
      const text = params.toString();
      if (text) url += (url.includes("?") ? "&" : "?") + text;
    }
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    const token = options.token === undefined ? this.token : options.token;
    if (token) headers.Authorization = `Token ${token}`;
    /** @type {RequestInit} */
    const init = { method, headers };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await this.#fetch(url, init);
    if (response.status === 204) return null;
    const text = await response.text();
    /** @type {any} */
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new ChatEngineHttpError(
        response.status,
        typeof body?.code === "string" ? body.code : "http_error",
        typeof body?.detail === "string" ? body.detail : response.statusText,
        body?.errors,
        retry === null ? null : Number(retry),
      );
    }
    return body;
  }

  // -- paging -------------------------------------------------------------------------

  /**
   * The page after `page`, or null on the last one.
   * @template T
   * @param {Page<T>} page
   * @returns {Promise<Page<T> | null>}
   */
  async nextPage(page) {
    return page.next ? this.request("GET", page.next) : null;
  }

  /**
   * The page before `page`, or null on the first one.
   * @template T
   * @param {Page<T>} page
   * @returns {Promise<Page<T> | null>}
   */
  async previousPage(page) {
    return page.previous ? this.request("GET", page.previous) : null;
  }

  /**
   * Every item of a collection, from `first` on, following `next` (at most `limit` items).
   * @template T
   * @param {Page<T> | Promise<Page<T>>} first
   * @param {{limit?: number}} [options]
   * @returns {Promise<T[]>}
   */
  async all(first, options = {}) {
    const limit = options.limit ?? 100000;
    /** @type {T[]} */
    const items = [];
    /** @type {Page<T> | null} */
    let page = await first;
    while (page !== null) {
      for (const item of page.results) {
        if (items.length >= limit) return items;
        items.push(item);
      }
      page = await this.nextPage(page);
    }
    return items;
  }

  // -- set-up (admin and org tokens) -----------------------------------------------------

  /** @param {string} name @returns {Promise<Json>} `{id, name, created_at, token}` */
  createOrg(name) {
    return this.request("POST", "/api/v5/orgs", { body: { name } });
  }

  /** @param {string} orgId @returns {Promise<Json>} */
  org(orgId) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}`);
  }

  /**
   * @param {string} orgId
   * @param {{name: string, private_chats?: boolean}} body
   * @returns {Promise<Json>}
   */
  createRoom(orgId, body) {
    return this.request("POST", `/api/v5/orgs/${enc(orgId)}/rooms`, { body });
  }

  /**
   * @param {string} orgId
   * @param {{first_name: string, last_name: string, alias: string, room_ids?: string[]}} body
   * @returns {Promise<Json>} the user, with its `token`
   */
  createUser(orgId, body) {
    return this.request("POST", `/api/v5/orgs/${enc(orgId)}/users`, { body });
  }

  /**
   * Register a visitor of the org (again, with `id`: a fresh token, and the old one stops
   * working).
   * @param {string} orgId
   * @param {{id?: string}} [body]
   * @returns {Promise<{id: string, token: string}>}
   */
  registerOrgVisitor(orgId, body = {}) {
    return this.request("POST", `/api/v5/orgs/${enc(orgId)}/visitors`, { body });
  }

  /**
   * Start a chat for a visitor in a room (as the org or a user).
   * @param {string} orgId
   * @param {string} roomId
   * @param {string} visitorId
   * @param {{auto_resume?: string}} [body]
   * @returns {Promise<Json>}
   */
  createChat(orgId, roomId, visitorId, body = {}) {
    return this.request(
      "POST",
      `/api/v5/orgs/${enc(orgId)}/rooms/${enc(roomId)}/visitors/${enc(visitorId)}/chats`,
      { body },
    );
  }

  // -- operators -------------------------------------------------------------------------

  /** @param {string} orgId @param {string} userId @returns {Promise<Json>} */
  user(orgId, userId) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}/users/${enc(userId)}`);
  }

  /**
   * The org's own and shared rooms.
   * @param {string} orgId
   * @param {Query} [query] `page_size`, `cursor`
   * @returns {Promise<Page<Json>>}
   */
  rooms(orgId, query) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}/rooms`, { query });
  }

  /**
   * A room's open chats, oldest first.
   * @param {string} orgId
   * @param {string} roomId
   * @param {Query} [query] `is_waiting_response`, `page_size`, `cursor`
   * @returns {Promise<Page<Json>>}
   */
  roomChats(orgId, roomId, query) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}/rooms/${enc(roomId)}/chats`, {
      query,
    });
  }

  /**
   * A chat in its rich form.
   * @param {string} orgId
   * @param {string} chatId
   * @returns {Promise<Json>}
   */
  chat(orgId, chatId) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}`);
  }

  /**
   * @param {string} orgId
   * @param {string} chatId
   * @param {{is_ended?: boolean, is_private?: boolean}} body
   * @returns {Promise<Json>} the chat, rich form
   */
  updateChat(orgId, chatId, body) {
    return this.request("PATCH", `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}`, { body });
  }

  /** @param {string} orgId @param {string} chatId @returns {Promise<Json>} */
  endChat(orgId, chatId) {
    return this.updateChat(orgId, chatId, { is_ended: true });
  }

  /**
   * A chat's messages, oldest first.
   * @param {string} orgId
   * @param {string} chatId
   * @param {Query} [query] `page_size`, `cursor`
   * @returns {Promise<Page<Json>>}
   */
  messages(orgId, chatId, query) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}/messages`, {
      query,
    });
  }

  /**
   * Post a message as a user (`sender_id`: the user; a user token may only name itself).
   * @param {string} orgId
   * @param {string} chatId
   * @param {{sender_id: string, message: string, type?: string, page_url?: string, page_title?: string}} body
   * @returns {Promise<Json>}
   */
  postMessage(orgId, chatId, body) {
    return this.request("POST", `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}/messages`, {
      body,
    });
  }

  /**
   * Users present in the chat, by join time.
   * @param {string} orgId
   * @param {string} chatId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  presences(orgId, chatId, query) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}/presences`, {
      query,
    });
  }

  /**
   * Join a user to a chat; `exclusive` takes it (the others present leave).
   * @param {string} orgId
   * @param {string} chatId
   * @param {string} userId
   * @param {{exclusive?: boolean}} [options]
   * @returns {Promise<Json>} the presence
   */
  join(orgId, chatId, userId, options = {}) {
    return this.request("POST", `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}/presences`, {
      body: { user_id: userId, exclusive: options.exclusive === true },
    });
  }

  /**
   * @param {string} orgId
   * @param {string} chatId
   * @param {string} userId
   * @returns {Promise<null>}
   */
  leave(orgId, chatId, userId) {
    return this.request(
      "DELETE",
      `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}/presences/${enc(userId)}`,
    );
  }

  /**
   * @param {string} orgId
   * @param {string} userId
   * @param {string} chatId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  participations(orgId, userId, chatId, query) {
    return this.request(
      "GET",
      `/api/v5/orgs/${enc(orgId)}/users/${enc(userId)}/chats/${enc(chatId)}/participations`,
      { query },
    );
  }

  /**
   * Chats the user took part or was present in.
   * @param {string} orgId
   * @param {string} userId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  userChats(orgId, userId, query) {
    return this.request("GET", `/api/v5/orgs/${enc(orgId)}/users/${enc(userId)}/chats`, {
      query,
    });
  }

  /**
   * Chats the user is present in now, by join time.
   * @param {string} orgId
   * @param {string} userId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  currentChats(orgId, userId, query) {
    return this.request(
      "GET",
      `/api/v5/orgs/${enc(orgId)}/users/${enc(userId)}/current_chats`,
      { query },
    );
  }

  /**
   * @param {string} orgId
   * @param {string} chatId
   * @param {string} name
   * @returns {Promise<Json>}
   */
  addTag(orgId, chatId, name) {
    return this.request("POST", `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}/tags`, {
      body: { name },
    });
  }

  /**
   * @param {string} orgId
   * @param {string} chatId
   * @param {string} name
   * @returns {Promise<null>}
   */
  removeTag(orgId, chatId, name) {
    return this.request(
      "DELETE",
      `/api/v5/orgs/${enc(orgId)}/chats/${enc(chatId)}/tags/${enc(name)}`,
    );
  }

  // -- visitors --------------------------------------------------------------------------

  /**
   * Open registration: a new visitor and its token (no token needed).
   * @returns {Promise<{id: string, token: string}>}
   */
  registerVisitor() {
    return this.request("POST", "/api/v5/client/visitors", { token: null });
  }

  /**
   * @param {string} visitorId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  visitorChats(visitorId, query) {
    return this.request("GET", `/api/v5/client/visitors/${enc(visitorId)}/chats`, { query });
  }

  /**
   * Resume the visitor's recent chat in the room (`auto_resume`, the default), or start one.
   * @param {string} visitorId
   * @param {string} roomId
   * @param {{auto_resume?: boolean}} [body]
   * @returns {Promise<Json>}
   */
  startChat(visitorId, roomId, body = {}) {
    return this.request(
      "POST",
      `/api/v5/client/visitors/${enc(visitorId)}/rooms/${enc(roomId)}/chats`,
      { body },
    );
  }

  /** @param {string} visitorId @param {string} chatId @returns {Promise<Json>} */
  visitorChat(visitorId, chatId) {
    return this.request("GET", `/api/v5/client/visitors/${enc(visitorId)}/chats/${enc(chatId)}`);
  }

  /** @param {string} visitorId @param {string} chatId @returns {Promise<Json>} */
  visitorEndChat(visitorId, chatId) {
    return this.request(
      "PATCH",
      `/api/v5/client/visitors/${enc(visitorId)}/chats/${enc(chatId)}`,
      { body: { is_ended: true } },
    );
  }

  /**
   * @param {string} visitorId
   * @param {string} chatId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  visitorMessages(visitorId, chatId, query) {
    return this.request(
      "GET",
      `/api/v5/client/visitors/${enc(visitorId)}/chats/${enc(chatId)}/messages`,
      { query },
    );
  }

  /**
   * @param {string} visitorId
   * @param {string} chatId
   * @param {{message: string, page_url?: string, page_title?: string}} body
   * @returns {Promise<Json>}
   */
  visitorPost(visitorId, chatId, body) {
    return this.request(
      "POST",
      `/api/v5/client/visitors/${enc(visitorId)}/chats/${enc(chatId)}/messages`,
      { body },
    );
  }

  /**
   * @param {string} visitorId
   * @param {string} chatId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  visitorPresences(visitorId, chatId, query) {
    return this.request(
      "GET",
      `/api/v5/client/visitors/${enc(visitorId)}/chats/${enc(chatId)}/presences`,
      { query },
    );
  }

  /**
   * @param {string} visitorId
   * @param {string} chatId
   * @param {Query} [query]
   * @returns {Promise<Page<Json>>}
   */
  visitorParticipations(visitorId, chatId, query) {
    return this.request(
      "GET",
      `/api/v5/client/visitors/${enc(visitorId)}/chats/${enc(chatId)}/participations`,
      { query },
    );
  }
}

/** @param {string} part */
function enc(part) {
  return encodeURIComponent(part);
}

// ---------------------------------------------------------------------------------------
// msgpack: the subset the protocol uses (maps, arrays, strings, numbers, booleans, nil,
// binary), for the `chatengine.v1.msgpack` subprotocol.

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Encode a value as msgpack.
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function msgpackEncode(value) {
  /** @type {number[]} */
  const out = [];
  writeValue(out, value, 0);
  return Uint8Array.from(out);
}

/**
 * @param {number[]} out
 * @param {number} value
 * @param {number} bytes
 */
function pushUint(out, value, bytes) {
  for (let shift = (bytes - 1) * 8; shift >= 0; shift -= 8) {
    out.push(Math.floor(value / 2 ** shift) & 0xff);
  }
}

/**
 * @param {number[]} out
 * @param {unknown} value
 * @param {number} depth
 */
function writeValue(out, value, depth) {
  if (depth > 64) throw new RangeError("msgpack: nested too deeply");
  if (value === null || value === undefined) {
    out.push(0xc0);
  } else if (value === false) {
    out.push(0xc2);
  } else if (value === true) {
    out.push(0xc3);
  } else if (typeof value === "number") {
    writeNumber(out, value);
  } else if (typeof value === "string") {
    const bytes = utf8Encoder.encode(value);
    const n = bytes.length;
    if (n < 32) out.push(0xa0 | n);
    else if (n < 0x100) out.push(0xd9, n);
    else if (n < 0x10000) out.push(0xda, n >> 8, n & 0xff);
    else {
      out.push(0xdb);
      pushUint(out, n, 4);
    }
    for (const byte of bytes) out.push(byte);
  } else if (value instanceof Uint8Array) {
    const n = value.length;
    if (n < 0x100) out.push(0xc4, n);
    else if (n < 0x10000) out.push(0xc5, n >> 8, n & 0xff);
    else {
      out.push(0xc6);
      pushUint(out, n, 4);
    }
    for (const byte of value) out.push(byte);
  } else if (Array.isArray(value)) {
    writeLength(out, value.length, 0x90, 0xdc);
    for (const item of value) writeValue(out, item, depth + 1);
  } else if (typeof value === "object") {
    const entries = Object.entries(/** @type {Record<string, unknown>} */ (value)).filter(
      ([, item]) => item !== undefined,
    );
    writeLength(out, entries.length, 0x80, 0xde);
    for (const [key, item] of entries) {
      writeValue(out, key, depth + 1);
      writeValue(out, item, depth + 1);
    }
  } else {
    throw new TypeError(`msgpack: cannot encode a ${typeof value}`);
  }
}

/**
 * @param {number[]} out
 * @param {number} n
 * @param {number} fix the fix-size type byte (n < 16)
 * @param {number} wide the 16-bit length type byte (the 32-bit one follows it)
 */
function writeLength(out, n, fix, wide) {
  if (n < 16) out.push(fix | n);
  else if (n < 0x10000) out.push(wide, n >> 8, n & 0xff);
  else {
    out.push(wide + 1);
    pushUint(out, n, 4);
  }
}

/**
 * @param {number[]} out
 * @param {number} value
 */
function writeNumber(out, value) {
  if (Number.isSafeInteger(value)) {
    if (value >= 0) {
      if (value < 0x80) out.push(value);
      else if (value < 0x100) out.push(0xcc, value);
      else if (value < 0x10000) out.push(0xcd, value >> 8, value & 0xff);
      else if (value < 0x100000000) {
        out.push(0xce);
        pushUint(out, value, 4);
      } else {
        out.push(0xcf);
        pushUint(out, value, 8);
      }
      return;
    }
    if (value >= -32) {
      out.push(value & 0xff);
      return;
    }
    if (value >= -0x80000000) {
      const view = new DataView(new ArrayBuffer(4));
      view.setInt32(0, value);
      out.push(0xd2, ...new Uint8Array(view.buffer));
      return;
    }
    const view = new DataView(new ArrayBuffer(8));
    view.setBigInt64(0, BigInt(value));
    out.push(0xd3, ...new Uint8Array(view.buffer));
    return;
  }
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, value);
  out.push(0xcb, ...new Uint8Array(view.buffer));
}

/**
 * Decode one msgpack value (the whole buffer).
 * @param {Uint8Array} bytes
 * @returns {unknown}
 */
export function msgpackDecode(bytes) {
  const reader = { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), pos: 0 };
  const value = readValue(reader, 0);
  if (reader.pos !== bytes.length) throw new RangeError("msgpack: extra bytes after the value");
  return value;
}

/**
 * @typedef {{bytes: Uint8Array, view: DataView, pos: number}} Reader
 */

/**
 * @param {Reader} r
 * @param {number} n
 * @returns {number} the position to read from
 */
function take(r, n) {
  const at = r.pos;
  if (at + n > r.bytes.length) throw new RangeError("msgpack: truncated");
  r.pos = at + n;
  return at;
}

/**
 * @param {Reader} r
 * @param {number} n
 */
function readString(r, n) {
  const at = take(r, n);
  return utf8Decoder.decode(r.bytes.subarray(at, at + n));
}

/**
 * @param {Reader} r
 * @param {number} n
 * @param {number} depth
 */
function readArray(r, n, depth) {
  /** @type {unknown[]} */
  const items = [];
  for (let i = 0; i < n; i++) items.push(readValue(r, depth + 1));
  return items;
}

/**
 * @param {Reader} r
 * @param {number} n
 * @param {number} depth
 */
function readMap(r, n, depth) {
  /** @type {Record<string, unknown>} */
  const map = {};
  for (let i = 0; i < n; i++) {
    const key = readValue(r, depth + 1);
    const value = readValue(r, depth + 1);
    Object.defineProperty(map, String(key), {
      value,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return map;
}

/**
 * @param {bigint} value
 * @returns {number | bigint}
 */
function narrow(value) {
  return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
    ? Number(value)
    : value;
}

/**
 * @param {Reader} r
 * @param {number} depth
 * @returns {unknown}
 */
function readValue(r, depth) {
  if (depth > 512) throw new RangeError("msgpack: nested too deeply");
  const type = r.bytes[take(r, 1)];
  const view = r.view;
  if (type < 0x80) return type;
  if (type >= 0xe0) return type - 0x100;
  if (type <= 0x8f) return readMap(r, type & 0x0f, depth);
  if (type <= 0x9f) return readArray(r, type & 0x0f, depth);
  if (type <= 0xbf) return readString(r, type & 0x1f);
  switch (type) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
    case 0xc5:
    case 0xc6: {
      const size = type === 0xc4 ? 1 : type === 0xc5 ? 2 : 4;
      const at = take(r, size);
      const n = size === 1 ? view.getUint8(at) : size === 2 ? view.getUint16(at) : view.getUint32(at);
      const start = take(r, n);
      return r.bytes.slice(start, start + n);
    }
    case 0xca:
      return view.getFloat32(take(r, 4));
    case 0xcb:
      return view.getFloat64(take(r, 8));
    case 0xcc:
      return view.getUint8(take(r, 1));
    case 0xcd:
      return view.getUint16(take(r, 2));
    case 0xce:
      return view.getUint32(take(r, 4));
    case 0xcf:
      return narrow(view.getBigUint64(take(r, 8)));
    case 0xd0:
      return view.getInt8(take(r, 1));
    case 0xd1:
      return view.getInt16(take(r, 2));
    case 0xd2:
      return view.getInt32(take(r, 4));
    case 0xd3:
      return narrow(view.getBigInt64(take(r, 8)));
    case 0xd9:
      return readString(r, view.getUint8(take(r, 1)));
    case 0xda:
      return readString(r, view.getUint16(take(r, 2)));
    case 0xdb:
      return readString(r, view.getUint32(take(r, 4)));
    case 0xdc:
      return readArray(r, view.getUint16(take(r, 2)), depth);
    case 0xdd:
      return readArray(r, view.getUint32(take(r, 4)), depth);
    case 0xde:
      return readMap(r, view.getUint16(take(r, 2)), depth);
    case 0xdf:
      return readMap(r, view.getUint32(take(r, 4)), depth);
    default:
      throw new RangeError(`msgpack: type 0x${type.toString(16)} is not supported`);
  }
}
