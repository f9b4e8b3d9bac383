// @ts-check
// What the operator console and the visitor page share: a live collection (a channel
// and the HTTP collection it mirrors, kept equal), the connection badge, the tab's
// storage, notices and small DOM helpers.

import { applyEvent, ChatEngineHttpError } from "./chat-engine.js";

/** @typedef {import("./chat-engine.js").ChatEngineClient} ChatEngineClient */
/** @typedef {import("./chat-engine.js").ChatEvent} ChatEvent */
/** @typedef {Record<string, any>} Item */

const RELOAD_DELAYS = [500, 1000, 2000, 5000, 10000];

/**
 * The pages' reconnection delays (ms; each drawn at random below the current bound):
 * an operator waits at most a few seconds once the server is back, and a server's
 * handful of console pages reconnecting that often costs it little.
 */
export const RECONNECT = { initialDelay: 250, maxDelay: 4000 };

/**
 * A collection read over HTTP and kept current by its channel.
 *
 * The order that never misses nor doubles an item: subscribe first; once the server
 * has answered, read the collection over HTTP; events that arrive meanwhile wait in a
 * buffer and are applied, in order, over what was read. An event older than the read
 * is harmless: every later change of the same item is also in the buffer (it happened
 * after the subscription), so applying them all in order ends on the current state.
 * The same happens again when the server cannot replay what a reconnection missed
 * (`onReset`). The client hands each event over once, in `seq` order, across
 * reconnections, so a resumed channel needs nothing from here.
 */
export class LiveCollection {
  /** @type {Map<string, Item>} */
  items = new Map();
  /** True once the first read is in. */
  loaded = false;
  /** @type {ChatEvent[]} */
  #buffer = [];
  #loading = true;
  #generation = 0;
  #stopped = false;
  /** @type {{unsubscribe(): void, ready: Promise<unknown>} | null} */
  #subscription = null;

  /**
   * @param {object} options
   * @param {ChatEngineClient} options.client
   * @param {string} options.channel
   * @param {() => Promise<Item[]>} options.load reads the whole collection over HTTP
   * @param {(item: Item) => string} [options.key] default: the item's `id`
   * @param {(events: ChatEvent[] | null) => void} options.onChange null: everything may
   *   have changed (a fresh read); else the events just applied
   * @param {(message: string) => void} [options.onError]
   */
  constructor(options) {
    this.client = options.client;
    this.channel = options.channel;
    this.load = options.load;
    this.key = options.key ?? ((item) => String(item.id));
    this.onChange = options.onChange;
    this.onError = options.onError ?? (() => {});
  }

  /** Subscribe, then read; resolves once the collection is read. */
  async start() {
    const subscription = this.client.subscribe(this.channel, {
      onEvent: (event) => this.#event(event),
      onReset: () => {
        void this.#reload();
      },
      onError: (error) => this.onError(error.detail ?? error.code ?? "subscription refused"),
    });
    this.#subscription = subscription;
    await subscription.ready;
    await this.#reload();
  }

  stop() {
    this.#stopped = true;
    this.#subscription?.unsubscribe();
  }

  /** @param {ChatEvent} event */
  #event(event) {
    if (this.#stopped) return;
    if (this.#loading) {
      this.#buffer.push(event);
      return;
    }
    if (applyEvent(this.items, event)) this.onChange([event]);
  }

  async #reload() {
    const generation = ++this.#generation;
    this.#loading = true;
    this.#buffer = [];
    /** @type {Item[] | null} */
    let read = null;
    for (let attempt = 0; read === null; attempt++) {
      try {
        read = await this.load();
      } catch (error) {
        if (this.#stopped || generation !== this.#generation) return;
        this.onError(describe(error));
        if (error instanceof ChatEngineHttpError && error.status < 500 && error.status !== 429) {
          return; // refused (gone, not allowed): asking again would not change that
        }
        const delay = RELOAD_DELAYS[Math.min(attempt, RELOAD_DELAYS.length - 1)];
        await new Promise((resolve) => setTimeout(resolve, delay));
        if (this.#stopped || generation !== this.#generation) return;
      }
    }
    if (this.#stopped || generation !== this.#generation) return;
    /** @type {Map<string, Item>} */
    const items = new Map();
    for (const item of read) items.set(this.key(item), item);
    for (const event of this.#buffer) applyEvent(items, event);
    this.items = items;
    this.#buffer = [];
    this.#loading = false;
    this.loaded = true;
    this.onChange(null);
  }
}

/**
 * A sentence for an error of the HTTP helper or of fetch itself.
 * @param {unknown} error
 * @returns {string}
 */
export function describe(error) {
  if (error instanceof ChatEngineHttpError) {
    const fields = error.errors
      ? Object.entries(error.errors)
          .map(([field, problems]) => `${field}: ${problems.join(" ")}`)
          .join("; ")
      : "";
    return `${error.detail}${fields ? ` (${fields})` : ""} [${error.code}]`;
  }
  if (error instanceof TypeError) return "The server cannot be reached; try again in a moment.";
  return error instanceof Error ? error.message : String(error);
}

/**
 * @param {unknown} error
 * @param {number} status
 */
export function hasStatus(error, status) {
  return error instanceof ChatEngineHttpError && error.status === status;
}

const STATE_TEXT = {
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Not connected",
};

/**
 * An `onStateChange` that shows the session's state in `element`, and while the page
 * waits to reconnect, `button` to try at once (`client()` is the page's client).
 * @param {HTMLElement} element
 * @param {HTMLElement} button
 * @param {() => ChatEngineClient | null} client
 * @returns {(state: "connecting" | "open" | "reconnecting" | "closed") => void}
 */
export function connectionBadge(element, button, client) {
  button.onclick = () => client()?.reconnectNow();
  return (state) => {
    element.dataset.state = state;
    element.textContent = STATE_TEXT[state] ?? state;
    button.hidden = state !== "reconnecting";
  };
}

/** The tab's own storage: gone when the tab closes, never shared with other tabs. */
export const tab = {
  /** @param {string} name */
  get(name) {
    try {
      return sessionStorage.getItem(name);
    } catch {
      return null;
    }
  },
  /** @param {string} name @param {string | null} value */
  set(name, value) {
    try {
      if (value === null) sessionStorage.removeItem(name);
      else sessionStorage.setItem(name, value);
    } catch {
      // storage refused (private mode): the page still works until it is reloaded
    }
  },
};

/**
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const found = document.getElementById(id);
  if (!found) throw new Error(`no element #${id}`);
  return found;
}

/**
 * A new element with attributes (`text` sets its text) and children.
 * @param {string} tag
 * @param {Record<string, string | boolean | undefined>} [attributes]
 * @param {(Node | string)[]} children
 * @returns {HTMLElement}
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue;
    if (name === "text") element.textContent = String(value);
    else if (name === "className") element.className = String(value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children);
  return element;
}

let noticeTimer = 0;

/**
 * Show a sentence in the page's alert line (read out by screen readers); it stays until
 * the next one, or `seconds` pass.
 * @param {string} text
 * @param {number} [seconds]
 */
export function notify(text, seconds = 12) {
  const notice = byId("notice");
  notice.textContent = text;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = window.setTimeout(() => {
    notice.hidden = true;
  }, seconds * 1000);
}

/** @param {string} id */
export function shortId(id) {
  return id.slice(0, 8);
}

/**
 * `HH:MM` (today) or `D Mon HH:MM` of an API timestamp (UTC, no offset), in local time.
 * @param {string | null | undefined} stamp
 */
export function clock(stamp) {
  if (!stamp) return "";
  const when = new Date(`${stamp}Z`);
  if (Number.isNaN(when.getTime())) return stamp;
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (when.toDateString() === new Date().toDateString()) return time;
  return `${when.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

/**
 * Submit a form with Enter in its textarea (Shift+Enter: a new line).
 * @param {HTMLTextAreaElement} textarea
 * @param {HTMLFormElement} form
 */
export function enterSends(textarea, form) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

/**
 * One message as a list item of the log.
 * @param {Item} message
 * @param {(message: Item) => string} who the sender's name
 * @returns {HTMLElement}
 */
export function messageItem(message, who) {
  const time = h("time", { datetime: `${message.created_at}Z`, text: clock(message.created_at) });
  if (message.type === "join" || message.type === "leave") {
    const what = message.type === "join" ? "joined" : "left";
    return h(
      "li",
      { className: "event", "data-id": message.id },
      `${who(message)} ${what} `,
      time,
    );
  }
  return h(
    "li",
    { className: `message from-${message.sender_type}`, "data-id": message.id },
    h("span", { className: "sender", text: who(message) }),
    " ",
    time,
    h("p", { className: "text", text: message.message ?? "" }),
  );
}

/**
 * Keep a message log equal to a collection: a fresh read redraws it, an event appends
 * (messages never change, and a new one is always the newest). Stays at the bottom
 * when it was there.
 * @param {HTMLElement} log
 * @param {LiveCollection} messages
 * @param {(message: Item) => string} who
 * @param {ChatEvent[] | null} events
 */
export function drawMessages(log, messages, who, events) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  if (events === null) {
    log.replaceChildren(...[...messages.items.values()].map((message) => messageItem(message, who)));
  } else {
    for (const event of events) {
      if (event.action !== "added") continue;
      if (log.querySelector(`[data-id="${CSS.escape(event.resource_id)}"]`)) continue;
      const message = messages.items.get(event.resource_id);
      if (message) log.append(messageItem(message, who));
    }
  }
  if (atBottom || events === null) log.scrollTop = log.scrollHeight;
}
