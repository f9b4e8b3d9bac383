// @ts-check
// The operator console: sign in with a user token, watch the rooms and their waiting
// chats, open a chat (history, then live messages, presences, participants), write,
// join, take, leave, end; the operator's current chats. Everything on screen is a live
// collection (live.js): the channel first, then the HTTP read, then the events.

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
  h,
  hasStatus,
  notify,
  shortId,
  tab,
} from "./live.js";

/** @typedef {Record<string, any>} Item */
/** @typedef {import("./chat-engine.js").ChatEvent} ChatEvent */

const TOKEN = "chat-engine.operator.token";
const ROOM = "chat-engine.operator.room";
const CHAT = "chat-engine.operator.chat";
const PAGE_SIZE = 50; // chats drawn at once; the rest are pages away
const READ_PAGE = 100; // the API's largest page
const MESSAGE_LIMIT = 5000; // the newest chats hold far fewer; a longer history is cut

let http = new ChatEngineHttp();
/** @type {ChatEngineClient | null} */
let client = null;
/** @type {Item} */
let me = {};
let orgId = "";
/** @type {Map<string, Item>} rooms the operator may serve, by id, in the API's order */
const rooms = new Map();
/** @type {Map<string, LiveCollection>} each room's open chats */
const roomChats = new Map();
/** @type {LiveCollection | null} */
let current = null;
/** @type {string | null} */
let selectedRoom = null;
let page = 0;
let filter = "waiting";
/** @type {ChatView | null} */
let chatView = null;
/** @type {Map<string, string>} user id -> name, for participants */
const names = new Map();

// -- drawing, at most once a frame ----------------------------------------------------

/** @type {Set<() => void>} */
const dirty = new Set();
let drawScheduled = false;

/** @param {() => void} draw */
function schedule(draw) {
  dirty.add(draw);
  if (drawScheduled) return;
  drawScheduled = true;
  const run = () => {
    drawScheduled = false;
    const draws = [...dirty];
    dirty.clear();
    for (const each of draws) each();
  };
  if (document.hidden) setTimeout(run, 50);
  else requestAnimationFrame(run);
}

// -- signing in and out ---------------------------------------------------------------

/** @param {string} token */
async function signIn(token) {
  http = new ChatEngineHttp({ token });
  /** @type {Item} */
  let who;
  try {
    who = await http.request("GET", "/api/v5/me");
  } catch (error) {
    if (hasStatus(error, 401)) {
      tab.set(TOKEN, null);
      notify("This token is not valid. Check it and sign in again.");
    } else {
      notify(describe(error));
    }
    showSignIn();
    return;
  }
  if (who.kind !== "user") {
    tab.set(TOKEN, null);
    notify(
      who.kind === "visitor"
        ? "That is a visitor's token: use the visitor page."
        : "This page is for operators: sign in with a user's own token.",
    );
    showSignIn();
    return;
  }
  tab.set(TOKEN, token);
  me = who.user;
  orgId = who.organization_id;
  names.set(me.id, me.full_name);
  byId("sign-in-view").hidden = true;
  byId("console-view").hidden = false;
  byId("sign-out").hidden = false;
  const whoami = byId("whoami");
  whoami.hidden = false;
  whoami.textContent = `Signed in as ${me.full_name} (${me.alias})`;

  const live = client = new ChatEngineClient({
    url: http.wsUrl(),
    token,
    backoff: RECONNECT,
    onStateChange: connectionBadge(byId("connection"), byId("reconnect"), () => client),
    onAuthError: () => {
      notify("Your token stopped working. Sign in again with the new one.", 60);
      signOut(false);
      return null;
    },
  });
  current = new LiveCollection({
    client: live,
    channel: channels.currentChats(orgId, me.id),
    load: () => http.all(http.currentChats(orgId, me.id, { page_size: READ_PAGE })),
    onChange: () => {
      schedule(drawCurrent);
      if (chatView) schedule(() => chatView?.drawControls());
    },
    onError: (message) => notify(`My chats: ${message}`),
  });
  const starting = [current.start()];
  try {
    const all = await http.all(http.rooms(orgId, { page_size: READ_PAGE }));
    for (const room of all) {
      if (me.room_ids === null || me.room_ids.includes(room.id)) rooms.set(room.id, room);
    }
  } catch (error) {
    notify(`Rooms: ${describe(error)}`);
  }
  for (const room of rooms.values()) {
    const chats = new LiveCollection({
      client: live,
      channel: channels.roomChats(orgId, room.id),
      load: () => http.all(http.roomChats(orgId, room.id, { page_size: READ_PAGE })),
      onChange: (events) => roomChanged(room.id, events),
      onError: (message) => notify(`${room.name}: ${message}`),
    });
    roomChats.set(room.id, chats);
    starting.push(chats.start());
  }
  byId("rooms-empty").hidden = rooms.size > 0;
  schedule(drawRooms);
  const remembered = tab.get(ROOM);
  const first = remembered && rooms.has(remembered) ? remembered : rooms.keys().next().value;
  if (first) selectRoom(first, false);
  const openChat = tab.get(CHAT);
  if (openChat) {
    const [chatId, roomId] = openChat.split(" ");
    if (chatId && roomId) openChatView(chatId, roomId, false);
  }
  const results = await Promise.allSettled(starting);
  for (const result of results) {
    if (result.status === "rejected") notify(describe(result.reason));
  }
}

/** @param {boolean} [reload] */
function signOut(reload = true) {
  client?.close();
  client = null;
  tab.set(TOKEN, null);
  tab.set(ROOM, null);
  tab.set(CHAT, null);
  if (reload) window.location.reload();
  else showSignIn();
}

function showSignIn() {
  byId("sign-in-view").hidden = false;
  byId("console-view").hidden = true;
  byId("sign-out").hidden = true;
  byId("whoami").hidden = true;
  /** @type {HTMLInputElement} */ (byId("token")).focus();
}

// -- rooms ----------------------------------------------------------------------------

/**
 * @param {string} roomId
 * @param {ChatEvent[] | null} events
 */
function roomChanged(roomId, events) {
  schedule(drawRooms);
  schedule(drawCurrent); // a chat of mine may have turned waiting
  if (roomId === selectedRoom) schedule(drawRoomChats);
  const view = chatView;
  if (view && view.roomId === roomId) {
    const mine = events === null || events.some((event) => event.resource_id === view.chatId);
    if (mine) view.roomSaid(events);
  }
}

/** @param {LiveCollection} chats */
function waitingCount(chats) {
  let count = 0;
  for (const chat of chats.items.values()) if (chat.is_waiting_response) count += 1;
  return count;
}

function drawRooms() {
  const list = byId("rooms");
  const items = [];
  let waiting = 0;
  for (const chats of roomChats.values()) waiting += waitingCount(chats);
  document.title = `${waiting ? `(${waiting}) ` : ""}Operator console · chat engine`;
  for (const room of rooms.values()) {
    const chats = roomChats.get(room.id);
    const counts = chats?.loaded
      ? `${waitingCount(chats)} waiting · ${chats.items.size} open`
      : "loading…";
    const button = h(
      "button",
      {
        type: "button",
        className: "room-button",
        "aria-current": room.id === selectedRoom ? "true" : undefined,
        "data-room-id": room.id,
      },
      h("span", { className: "name", text: room.name }),
      " ",
      h("span", { className: "counts", text: counts }),
    );
    button.addEventListener("click", () => selectRoom(room.id, true));
    items.push(h("li", {}, button));
  }
  list.replaceChildren(...items);
}

/**
 * @param {string} roomId
 * @param {boolean} focus
 */
function selectRoom(roomId, focus) {
  if (selectedRoom !== roomId) page = 0;
  selectedRoom = roomId;
  tab.set(ROOM, roomId);
  const room = rooms.get(roomId);
  byId("room-heading").textContent = room ? room.name : "Choose a room";
  byId("room-tools").hidden = !room;
  schedule(drawRooms);
  schedule(drawRoomChats);
  if (focus) byId("room-heading").focus();
}

/** The selected room's chats under the filter, oldest first. */
function shownChats() {
  const chats = selectedRoom ? roomChats.get(selectedRoom) : undefined;
  if (!chats) return { chats: [], total: 0, loaded: false };
  const all = [...chats.items.values()];
  const shown = filter === "waiting" ? all.filter((chat) => chat.is_waiting_response) : all;
  return { chats: shown, total: all.length, loaded: chats.loaded };
}

function drawRoomChats() {
  const { chats, total, loaded } = shownChats();
  const pages = Math.max(1, Math.ceil(chats.length / PAGE_SIZE));
  page = Math.min(page, pages - 1);
  const start = page * PAGE_SIZE;
  const visible = chats.slice(start, start + PAGE_SIZE);
  const list = byId("room-chats");
  list.replaceChildren(...visible.map(chatRow));
  const waiting = filter === "waiting" ? chats.length : chats.filter((c) => c.is_waiting_response).length;
  byId("room-summary").textContent = loaded
    ? `${waiting} waiting of ${total} open`
    : "Loading…";
  byId("room-empty").hidden = !loaded || chats.length > 0;
  byId("room-empty").textContent =
    filter === "waiting" ? "No chat is waiting for an answer." : "No open chat.";
  const pager = byId("room-pager");
  pager.hidden = chats.length <= PAGE_SIZE;
  byId("page-label").textContent = `${start + 1}–${start + visible.length} of ${chats.length}`;
  /** @type {HTMLButtonElement} */ (byId("page-previous")).disabled = page === 0;
  /** @type {HTMLButtonElement} */ (byId("page-next")).disabled = page >= pages - 1;
}

/** @param {number} by */
function turnPage(by) {
  page = Math.max(0, page + by);
  drawRoomChats();
  const section = byId("room-chats").closest("section");
  if (section) section.scrollTop = 0;
}

/** @param {Item} chat */
function chatRow(chat) {
  const taken = chat.currently_present_user_count > 0;
  const badges = [];
  if (chat.is_waiting_response) badges.push(h("span", { className: "badge waiting", text: "Waiting" }));
  if (taken) {
    const present = chat.currently_present_user_count;
    badges.push(h("span", { className: "badge taken", text: `Taken (${present} present)` }));
  } else {
    badges.push(h("span", { className: "badge free", text: "Free" }));
  }
  const button = h(
    "button",
    {
      type: "button",
      className: "chat-row",
      "aria-current": chatView?.chatId === chat.id ? "true" : undefined,
    },
    h("span", { className: "name", text: `Chat ${shortId(chat.id)}` }),
    " ",
    ...badges,
    " ",
    h("span", {
      className: "muted",
      text: `${chat.message_count} message${chat.message_count === 1 ? "" : "s"} · started ${clock(chat.start_time)}`,
    }),
  );
  button.addEventListener("click", () => openChatView(chat.id, chat.room_id, true));
  return h(
    "li",
    {
      "data-chat-id": chat.id,
      "data-taken": taken ? "true" : "false",
      "data-waiting": chat.is_waiting_response ? "true" : "false",
    },
    button,
  );
}

// -- current chats ---------------------------------------------------------------------

function drawCurrent() {
  if (!current) return;
  const items = [];
  for (const chat of current.items.values()) {
    const room = rooms.get(chat.room_id);
    // the current chats channel says only joins and leaves; the room's says the rest
    const live = roomChats.get(chat.room_id)?.items.get(chat.id) ?? chat;
    const button = h(
      "button",
      {
        type: "button",
        className: "chat-row",
        "aria-current": chatView?.chatId === chat.id ? "true" : undefined,
      },
      h("span", { className: "name", text: `Chat ${shortId(chat.id)}` }),
      " ",
      live.is_waiting_response ? h("span", { className: "badge waiting", text: "Waiting" }) : "",
      h("span", { className: "muted", text: room ? room.name : "another room" }),
    );
    button.addEventListener("click", () => openChatView(chat.id, chat.room_id, true));
    items.push(h("li", { "data-chat-id": chat.id }, button));
  }
  byId("current-chats").replaceChildren(...items);
  byId("current-count").textContent = current.loaded ? `(${current.items.size})` : "";
  byId("current-empty").hidden = !current.loaded || current.items.size > 0;
}

// -- the open chat ----------------------------------------------------------------------

/**
 * @param {string} chatId
 * @param {string} roomId
 * @param {boolean} focus
 */
function openChatView(chatId, roomId, focus) {
  if (!client) return;
  if (chatView?.chatId !== chatId) {
    chatView?.close();
    chatView = new ChatView(client, chatId, roomId);
    tab.set(CHAT, `${chatId} ${roomId}`);
    void chatView.open();
  }
  schedule(drawRoomChats);
  schedule(drawCurrent);
  if (focus) byId("chat-heading").focus();
}

/** @param {string} userId */
function nameOf(userId) {
  const known = names.get(userId);
  if (known !== undefined) return known;
  names.set(userId, `Operator ${shortId(userId)}`);
  http.user(orgId, userId).then(
    (user) => {
      names.set(userId, user.full_name);
      if (chatView) schedule(() => chatView?.drawPeople());
    },
    () => {}, // a user of another org (a shared room): the short id stays
  );
  return /** @type {string} */ (names.get(userId));
}

/** @param {Item} message */
function senderOf(message) {
  if (message.sender_type === "visitor") return "Visitor";
  const name = message.sender_name ?? message.sender_public_name;
  if (name) {
    names.set(message.sender_id, name);
    return name;
  }
  return nameOf(message.sender_id);
}

class ChatView {
  /** @type {Item | null} the chat as last read over HTTP (rich form) */
  rich = null;
  ended = false;
  closed = false;

  /**
   * @param {ChatEngineClient} live
   * @param {string} chatId
   * @param {string} roomId
   */
  constructor(live, chatId, roomId) {
    this.chatId = chatId;
    this.roomId = roomId;
    const base = channels.roomChats(orgId, roomId);
    this.messages = new LiveCollection({
      client: live,
      channel: channels.chatSub(base, chatId, "messages"),
      load: () =>
        http.all(http.messages(orgId, chatId, { page_size: READ_PAGE }), { limit: MESSAGE_LIMIT }),
      onChange: (events) => {
        for (const message of this.messages.items.values()) {
          if (message.sender_type !== "visitor" && message.sender_name) {
            names.set(message.sender_id, message.sender_name);
          }
        }
        drawMessages(byId("messages"), this.messages, senderOf, events);
      },
      onError: (message) => notify(`Messages: ${message}`),
    });
    this.presences = new LiveCollection({
      client: live,
      channel: channels.chatSub(base, chatId, "presences"),
      load: () => http.all(http.presences(orgId, chatId, { page_size: READ_PAGE })),
      key: (presence) => presence.user_id,
      onChange: () => {
        for (const presence of this.presences.items.values()) {
          names.set(presence.user_id, presence.user.full_name);
        }
        schedule(() => this.drawPeople());
        schedule(() => this.drawControls());
      },
      onError: (message) => notify(`Presences: ${message}`),
    });
    this.participations = new LiveCollection({
      client: live,
      channel: channels.chatSub(base, chatId, "participations"),
      load: () =>
        http.all(http.participations(orgId, me.id, chatId, { page_size: READ_PAGE })),
      onChange: () => schedule(() => this.drawPeople()),
      onError: (message) => notify(`Participants: ${message}`),
    });
  }

  async open() {
    byId("chat-heading").textContent = `Chat ${shortId(this.chatId)}`;
    byId("chat-body").hidden = false;
    byId("messages").replaceChildren();
    byId("presences").replaceChildren();
    byId("participants").replaceChildren();
    byId("chat-status").textContent = "Loading…";
    this.drawControls();
    const started = Promise.all([
      this.messages.start(),
      this.presences.start(),
      this.participations.start(),
    ]);
    await this.readChat();
    try {
      await started;
    } catch (error) {
      if (!this.closed) notify(describe(error));
    }
  }

  async readChat() {
    try {
      const rich = await http.chat(orgId, this.chatId);
      if (this.closed) return;
      this.rich = rich;
      this.ended = Boolean(rich.end_time);
    } catch (error) {
      if (this.closed) return;
      if (hasStatus(error, 404)) {
        notify("That chat does not exist, or your organization cannot see it.");
        closeChatView();
        return;
      }
      notify(describe(error));
    }
    this.drawControls();
  }

  /** @param {ChatEvent[] | null} events the room's events of this chat (null: re-read) */
  roomSaid(events) {
    if (events?.some((event) => event.action === "removed")) {
      this.ended = true; // a chat leaves its room's open chats when it ends
      void this.readChat();
    }
    schedule(() => this.drawControls());
  }

  close() {
    this.closed = true;
    this.messages.stop();
    this.presences.stop();
    this.participations.stop();
  }

  /** The chat's collection form, live, when its room is one of ours. */
  live() {
    return roomChats.get(this.roomId)?.items.get(this.chatId) ?? null;
  }

  drawControls() {
    if (this.closed) return;
    const live = this.live();
    const present = this.presences.items.has(me.id);
    const ended = this.ended || Boolean(this.rich?.end_time);
    const parts = [];
    const room = rooms.get(this.roomId);
    if (room) parts.push(room.name);
    if (ended) parts.push(`Ended ${clock(this.rich?.end_time)}`.trim());
    else {
      parts.push("Open");
      if (live?.is_waiting_response) parts.push("waiting for an answer");
      const count = live ? live.currently_present_user_count : this.presences.items.size;
      parts.push(count > 0 ? `taken (${count} present)` : "nobody present");
    }
    const startTime = live?.start_time ?? this.rich?.start_time;
    if (startTime) parts.push(`started ${clock(startTime)}`);
    if (present) parts.push("you are in it");
    byId("chat-status").textContent = parts.join(" · ");
    byId("chat-status").dataset.ended = ended ? "true" : "false";
    /** @type {HTMLButtonElement} */ (byId("join")).disabled = present || ended;
    /** @type {HTMLButtonElement} */ (byId("take")).disabled = present || ended;
    /** @type {HTMLButtonElement} */ (byId("leave")).disabled = !present;
    /** @type {HTMLButtonElement} */ (byId("end")).disabled = ended;
    const compose = /** @type {HTMLFormElement} */ (byId("compose"));
    for (const control of Array.from(compose.elements)) {
      /** @type {HTMLInputElement} */ (control).disabled = ended;
    }
  }

  drawPeople() {
    if (this.closed) return;
    const present = [...this.presences.items.values()].map((presence) =>
      h("li", {
        "data-user-id": presence.user_id,
        text: `${presence.user.full_name}${presence.user_id === me.id ? " (you)" : ""}`,
      }),
    );
    byId("presences").replaceChildren(
      ...(present.length ? present : [h("li", { className: "muted", text: "Nobody" })]),
    );
    const participants = [...this.participations.items.values()].map((participation) =>
      h("li", {
        text:
          participation.type === "visitor"
            ? `Visitor ${shortId(participation.id)}`
            : nameOf(participation.id),
      }),
    );
    byId("participants").replaceChildren(...participants);
  }
}

function closeChatView() {
  chatView?.close();
  chatView = null;
  tab.set(CHAT, null);
  byId("chat-heading").textContent = "No chat open";
  byId("chat-body").hidden = true;
  schedule(drawRoomChats);
  schedule(drawCurrent);
}

/**
 * Run an action of the open chat with its button disabled meanwhile; a refusal is shown.
 * @param {HTMLButtonElement} button
 * @param {(view: ChatView) => Promise<unknown>} action
 * @param {string} [focusAfter] the id of the element to focus once it is done
 */
async function act(button, action, focusAfter = "") {
  const view = chatView;
  if (!view) return;
  button.disabled = true;
  try {
    await action(view);
    if (focusAfter) byId(focusAfter).focus(); // the button may now be disabled
  } catch (error) {
    if (error instanceof Error && "code" in error && error.code === "chat_already_taken") {
      notify("Another operator has this chat: you can join it, not take it.");
    } else {
      notify(describe(error));
    }
  } finally {
    view.drawControls();
  }
}

// -- wiring ------------------------------------------------------------------------------

function wire() {
  byId("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ (byId("token"));
    const token = input.value.trim();
    input.value = "";
    if (token) void signIn(token);
  });
  byId("sign-out").addEventListener("click", () => signOut(true));
  for (const radio of Array.from(document.querySelectorAll('input[name="filter"]'))) {
    radio.addEventListener("change", () => {
      filter = /** @type {HTMLInputElement} */ (radio).value;
      page = 0;
      schedule(drawRoomChats);
    });
  }
  byId("page-previous").addEventListener("click", () => turnPage(-1));
  byId("page-next").addEventListener("click", () => turnPage(1));
  const join = /** @type {HTMLButtonElement} */ (byId("join"));
  join.addEventListener("click", () =>
    act(join, (view) => http.join(orgId, view.chatId, me.id), "message"),
  );
  const take = /** @type {HTMLButtonElement} */ (byId("take"));
  take.addEventListener("click", () =>
    act(take, (view) => http.join(orgId, view.chatId, me.id, { exclusive: true }), "message"),
  );
  const leave = /** @type {HTMLButtonElement} */ (byId("leave"));
  leave.addEventListener("click", () =>
    act(leave, (view) => http.leave(orgId, view.chatId, me.id), "chat-heading"),
  );
  const end = /** @type {HTMLButtonElement} */ (byId("end"));
  end.addEventListener("click", () => {
    if (!window.confirm("End this chat for everyone? It cannot be reopened.")) return;
    void act(end, async (view) => {
      const rich = await http.endChat(orgId, view.chatId);
      view.rich = rich;
      view.ended = true;
    });
  });
  const compose = /** @type {HTMLFormElement} */ (byId("compose"));
  const text = /** @type {HTMLTextAreaElement} */ (byId("message"));
  enterSends(text, compose);
  compose.addEventListener("submit", async (event) => {
    event.preventDefault();
    const view = chatView;
    const message = text.value;
    if (!view || !message.trim()) return;
    const send = /** @type {HTMLButtonElement} */ (compose.querySelector("button"));
    send.disabled = true;
    try {
      await http.postMessage(orgId, view.chatId, { sender_id: me.id, message });
      text.value = "";
    } catch (error) {
      notify(describe(error)); // the text stays, to send again
    } finally {
      send.disabled = false;
      text.focus();
    }
  });
}

wire();
const saved = tab.get(TOKEN);
if (saved) void signIn(saved);
else showSignIn();
