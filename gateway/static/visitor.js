// @ts-check
// The visitor's side: register (open registration) or use a visitor token, start (or
// resume) a chat in a room, write, and read the operators' answers live.

import { ChatEngineClient, ChatEngineHttp, channels } from "./chat-engine.js";
import {
  LiveCollection,
  RECONNECT,
  byId,
  clock,
  connectionBadge,
  describe,
  drawMessages,
  enterSends,
  hasStatus,
  notify,
  shortId,
  tab,
} from "./live.js";

/** @typedef {Record<string, any>} Item */

const TOKEN = "chat-engine.visitor.token";
const VISITOR = "chat-engine.visitor.id";
const CHAT = "chat-engine.visitor.chat";
const READ_PAGE = 100;
const MESSAGE_LIMIT = 5000;

let http = new ChatEngineHttp();
/** @type {ChatEngineClient | null} */
let client = null;
let visitorId = "";
/** @type {LiveCollection | null} the visitor's chats (for the open one's state) */
let chats = null;
/** @type {{chatId: string, messages: LiveCollection, presences: LiveCollection} | null} */
let open = null;

/**
 * @param {string} token
 * @param {string} id
 */
function enter(token, id) {
  tab.set(TOKEN, token);
  tab.set(VISITOR, id);
  visitorId = id;
  http = new ChatEngineHttp({ token });
  byId("sign-in-view").hidden = true;
  byId("visitor-view").hidden = false;
  byId("sign-out").hidden = false;
  const whoami = byId("whoami");
  whoami.hidden = false;
  whoami.textContent = `Visitor ${shortId(id)}`;
  const live = client = new ChatEngineClient({
    url: http.wsUrl(),
    token,
    backoff: RECONNECT,
    onStateChange: connectionBadge(byId("connection"), byId("reconnect"), () => client),
    onAuthError: () => {
      notify("This visitor token stopped working.", 60);
      forget(false);
      return null;
    },
  });
  chats = new LiveCollection({
    client: live,
    channel: channels.visitorChats(id),
    load: () => http.all(http.visitorChats(id, { page_size: READ_PAGE })),
    onChange: drawStatus,
    onError: (message) => notify(`Chats: ${message}`),
  });
  chats.start().catch((error) => notify(describe(error)));
  const remembered = tab.get(CHAT);
  if (remembered) openChat(remembered);
  const room = new URLSearchParams(window.location.search).get("room");
  if (room) /** @type {HTMLInputElement} */ (byId("room")).value = room;
}

/** @param {boolean} reload */
function forget(reload) {
  client?.close();
  client = null;
  tab.set(TOKEN, null);
  tab.set(VISITOR, null);
  tab.set(CHAT, null);
  if (reload) window.location.reload();
  else {
    byId("sign-in-view").hidden = false;
    byId("visitor-view").hidden = true;
    byId("sign-out").hidden = true;
    byId("whoami").hidden = true;
  }
}

/** @param {Item} message */
function senderOf(message) {
  if (message.sender_type === "visitor") return "You";
  return message.sender_public_name ?? "Operator";
}

/** @param {string} chatId */
function openChat(chatId) {
  if (!client || open?.chatId === chatId) return;
  open?.messages.stop();
  open?.presences.stop();
  tab.set(CHAT, chatId);
  const base = channels.visitorChats(visitorId);
  const messages = new LiveCollection({
    client,
    channel: channels.chatSub(base, chatId, "messages"),
    load: () =>
      http.all(http.visitorMessages(visitorId, chatId, { page_size: READ_PAGE }), {
        limit: MESSAGE_LIMIT,
      }),
    onChange: (events) => drawMessages(byId("messages"), messages, senderOf, events),
    onError: (message) => notify(`Messages: ${message}`),
  });
  const presences = new LiveCollection({
    client,
    channel: channels.chatSub(base, chatId, "presences"),
    load: () => http.all(http.visitorPresences(visitorId, chatId, { page_size: READ_PAGE })),
    key: (presence) => presence.user_id,
    onChange: drawStatus,
    onError: (message) => notify(`Operators: ${message}`),
  });
  open = { chatId, messages, presences };
  byId("chat-heading").textContent = `Your chat ${shortId(chatId)}`;
  byId("chat-body").hidden = false;
  byId("messages").replaceChildren();
  drawStatus();
  Promise.all([messages.start(), presences.start()]).catch((error) => {
    if (hasStatus(error, 404)) {
      tab.set(CHAT, null);
      notify("That chat is not yours, or no longer exists.");
    } else {
      notify(describe(error));
    }
  });
}

function drawStatus() {
  if (!open) return;
  const chat = chats?.items.get(open.chatId);
  const ended = Boolean(chat?.end_time);
  const parts = [];
  if (chat) parts.push(ended ? `Ended ${clock(chat.end_time)}` : `Started ${clock(chat.start_time)}`);
  byId("chat-status").textContent = parts.join(" · ");
  byId("chat-status").dataset.ended = ended ? "true" : "false";
  const aliases = [...open.presences.items.values()].map((presence) => presence.user.alias);
  byId("operators").textContent = ended
    ? "This chat has ended. Start a new one to write again."
    : aliases.length
      ? `With you: ${aliases.join(", ")}`
      : "Waiting for an operator…";
  const compose = /** @type {HTMLFormElement} */ (byId("compose"));
  for (const control of Array.from(compose.elements)) {
    /** @type {HTMLInputElement} */ (control).disabled = ended;
  }
  /** @type {HTMLButtonElement} */ (byId("end")).disabled = ended;
}

function wire() {
  byId("register").addEventListener("click", async () => {
    const button = /** @type {HTMLButtonElement} */ (byId("register"));
    button.disabled = true;
    try {
      const visitor = await new ChatEngineHttp().registerVisitor();
      enter(visitor.token, visitor.id);
      byId("room").focus();
    } catch (error) {
      notify(
        hasStatus(error, 404) || hasStatus(error, 403)
          ? "This server does not allow open registration: paste a visitor token."
          : describe(error),
      );
    } finally {
      button.disabled = false;
    }
  });
  byId("sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ (byId("token"));
    const token = input.value.trim();
    if (!token) return;
    try {
      const who = await new ChatEngineHttp({ token }).request("GET", "/api/v5/me");
      if (who.kind !== "visitor") {
        notify("That is not a visitor's token.");
        return;
      }
      input.value = "";
      enter(token, who.id);
      byId("room").focus();
    } catch (error) {
      notify(hasStatus(error, 401) ? "This token is not valid." : describe(error));
    }
  });
  byId("sign-out").addEventListener("click", () => forget(true));
  byId("start").addEventListener("submit", async (event) => {
    event.preventDefault();
    const room = /** @type {HTMLInputElement} */ (byId("room")).value.trim();
    if (!room) return;
    try {
      // a recent open chat in the room is resumed rather than a second one started
      const chat = await http.startChat(visitorId, room, { auto_resume: true });
      openChat(chat.id);
      byId("message").focus();
    } catch (error) {
      notify(hasStatus(error, 404) ? "There is no room with that id." : describe(error));
    }
  });
  const compose = /** @type {HTMLFormElement} */ (byId("compose"));
  const text = /** @type {HTMLTextAreaElement} */ (byId("message"));
  enterSends(text, compose);
  compose.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = text.value;
    if (!open || !message.trim()) return;
    const send = /** @type {HTMLButtonElement} */ (compose.querySelector("button"));
    send.disabled = true;
    try {
      await http.visitorPost(visitorId, open.chatId, { message });
      text.value = "";
    } catch (error) {
      notify(describe(error));
    } finally {
      send.disabled = false;
      text.focus();
    }
  });
  byId("end").addEventListener("click", async () => {
    if (!open) return;
    try {
      await http.visitorEndChat(visitorId, open.chatId);
    } catch (error) {
      notify(describe(error));
    }
  });
}

wire();
const savedToken = tab.get(TOKEN);
const savedId = tab.get(VISITOR);
if (savedToken && savedId) enter(savedToken, savedId);
else {
  const room = new URLSearchParams(window.location.search).get("room");
  if (room) /** @type {HTMLInputElement} */ (byId("room")).value = room;
}
