// @ts-check
// What the tests against a real server share: an org with a room, an operator, a
// visitor and a chat, made over HTTP, and a recorder of a subscription's events.

import assert from "node:assert/strict";

import { ChatEngineHttp, channels } from "../chat-engine.js";
import { ADMIN_TOKEN } from "./server.js";

/** Back-off small enough for tests (a restart takes seconds, not minutes). */
export const FAST_BACKOFF = { initialDelay: 50, maxDelay: 400, resetAfter: 2000 };

/**
 * An org, a room, an operator (user), a visitor registered by the org, and a chat the
 * visitor started in the room.
 * @param {string} baseUrl
 */
export async function makeWorld(baseUrl) {
  const admin = new ChatEngineHttp({ baseUrl, token: ADMIN_TOKEN });
  const org = await admin.createOrg("JS client test");
  const orgHttp = new ChatEngineHttp({ baseUrl, token: org.token });
  const room = await orgHttp.createRoom(org.id, { name: "Support" });
  const user = await orgHttp.createUser(org.id, {
    first_name: "Olga",
    last_name: "Operator",
    alias: "olga",
  });
  const userHttp = new ChatEngineHttp({ baseUrl, token: user.token });
  const visitor = await orgHttp.registerOrgVisitor(org.id, {});
  const visitorHttp = new ChatEngineHttp({ baseUrl, token: visitor.token });
  const chat = await visitorHttp.startChat(visitor.id, room.id);
  const roomMessages = channels.chatSub(channels.roomChats(org.id, room.id), chat.id, "messages");
  const visitorMessages = channels.chatSub(channels.visitorChats(visitor.id), chat.id, "messages");
  return {
    admin,
    org,
    orgHttp,
    room,
    user,
    userHttp,
    visitor,
    visitorHttp,
    chat,
    roomMessages,
    visitorMessages,
    /** @param {string} text */
    visitorPost: (text) => visitorHttp.visitorPost(visitor.id, chat.id, { message: text }),
    /** @param {string} text */
    operatorPost: (text) =>
      userHttp.postMessage(org.id, chat.id, { sender_id: user.id, message: text }),
    /** Every message of the chat, oldest first, as the server holds them. */
    history: () => orgHttp.all(orgHttp.messages(org.id, chat.id, { page_size: 100 })),
  };
}

/**
 * The events a subscription handed over, its resets and its answers.
 * @param {import("../chat-engine.js").ChatEngineClient} client
 * @param {string} channel
 * @param {Partial<import("../chat-engine.js").SubscribeHandlers>} [extra]
 */
export function record(client, channel, extra = {}) {
  /** @type {import("../chat-engine.js").ChatEvent[]} */
  const events = [];
  /** @type {import("../chat-engine.js").ResetInfo[]} */
  const resets = [];
  /** @type {import("../chat-engine.js").SubscribedInfo[]} */
  const answers = [];
  const subscription = client.subscribe(channel, {
    ...extra,
    onEvent: (event) => events.push(event),
    onReset: (info) => {
      resets.push(info);
      extra.onReset?.(info);
    },
    onSubscribed: (info) => answers.push(info),
  });
  return { events, resets, answers, subscription };
}

/**
 * Every seq after the first is the one before plus one: nothing missing, nothing twice.
 * @param {import("../chat-engine.js").ChatEvent[]} events
 * @param {number} first the seq the first event must have
 */
export function assertContiguous(events, first) {
  assert.deepEqual(
    events.map((event) => event.seq),
    events.map((_, index) => first + index),
  );
}
