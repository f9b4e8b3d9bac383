// @ts-check
// The client's own rules, with a scripted socket standing in for the network: what each
// close code leads to, the back-off's bounds, the ping that finds a dead connection,
// events that come before their subscribe's answer, and the msgpack codec.
// (Everything end to end runs against a real server in client.test.js.)

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ChatEngineClient,
  applyEvent,
  channels,
  msgpackDecode,
  msgpackEncode,
} from "../chat-engine.js";
import { until } from "./server.js";

/** A socket the test drives: it opens, answers and closes when told to. */
class ScriptedSocket {
  /** @type {ScriptedSocket[]} */
  static made = [];

  /** @param {string} url @param {string | string[]} [protocols] */
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.binaryType = "blob";
    /** @type {Record<string, any>[]} */
    this.sent = [];
    /** @type {((event: any) => void) | null} */
    this.onopen = null;
    /** @type {((event: any) => void) | null} */
    this.onmessage = null;
    /** @type {((event: any) => void) | null} */
    this.onclose = null;
    /** @type {((event: any) => void) | null} */
    this.onerror = null;
    ScriptedSocket.made.push(this);
  }

  /** @param {string} data */
  send(data) {
    this.sent.push(JSON.parse(data));
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code, reason) {
    this.readyState = 3;
    this.closedWith = { code, reason };
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** @param {unknown} frame */
  answer(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** @param {number} code */
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The subscribe frames this socket carried. */
  subscribes() {
    return this.sent.filter((frame) => frame.type === "subscribe");
  }
}

/**
 * A client on scripted sockets whose jitter always picks the top of the range.
 * @param {Partial<import("../chat-engine.js").ClientOptions>} [options]
 */
function scripted(options = {}) {
  ScriptedSocket.made = [];
  /** @type {{state: string, info: import("../chat-engine.js").StateInfo}[]} */
  const states = [];
  /** @type {import("../chat-engine.js").ClientError[]} */
  const errors = [];
  const client = new ChatEngineClient({
    url: "ws://127.0.0.1:9/ws",
    token: "t0k",
    WebSocket: /** @type {any} */ (ScriptedSocket),
    backoff: { initialDelay: 10, maxDelay: 80, factor: 2, resetAfter: 60000 },
    pingInterval: 0,
    random: () => 0.999,
    onStateChange: (state, info) => states.push({ state, info }),
    onError: (error) => errors.push(error),
    ...options,
  });
  const socket = () => /** @type {ScriptedSocket} */ (ScriptedSocket.made.at(-1));
  return { client, states, errors, socket };
}

const CHANNEL = "/api/v5/orgs/o/rooms/r/chats";

test("the token travels as ?token= with the JSON subprotocol", () => {
  const { client, socket } = scripted();
  assert.equal(socket().url, "ws://127.0.0.1:9/ws?token=t0k");
  assert.deepEqual(socket().protocols, ["chatengine.v1.json"]);
  client.close();
});

test("back-off: full jitter under a ceiling that doubles up to maxDelay", async () => {
  const { client, states, socket } = scripted();
  for (let i = 0; i < 6; i++) {
    const made = ScriptedSocket.made.length;
    socket().serverClose(1006);
    await until(() => ScriptedSocket.made.length > made, "the next attempt");
  }
  const delays = states.filter((s) => s.state === "reconnecting").map((s) => s.info.delay);
  assert.deepEqual(delays, [9, 19, 39, 79, 79, 79]); // 0.999 x 10, 20, 40, 80, 80, 80
  client.close();
});

test("1001, 1012 and 4008 reconnect and resume with since and epoch", async () => {
  for (const code of [1001, 1012, 4008]) {
    const { client, socket, states } = scripted();
    const seen = /** @type {number[]} */ ([]);
    client.subscribe(CHANNEL, { onEvent: (event) => seen.push(event.seq) });
    socket().open();
    const [first] = socket().subscribes();
    assert.equal(first.since, undefined);
    socket().answer({
      type: "subscribed",
      id: first.id,
      channel: CHANNEL,
      seq: 4,
      resumed: false,
      epoch: "e1",
    });
    socket().answer([
      { channel: CHANNEL, action: "added", resource_id: "c5", resource: { id: "c5" }, seq: 5 },
      { channel: CHANNEL, action: "removed", resource_id: "c5", seq: 6 },
    ]);
    const made = ScriptedSocket.made.length;
    socket().serverClose(code);
    assert.equal(client.state, "reconnecting");
    assert.equal(states.at(-1)?.info.code, code);
    await until(() => ScriptedSocket.made.length > made, `a reconnect after ${code}`);
    socket().open();
    const [again] = socket().subscribes();
    assert.equal(again.since, 6);
    assert.equal(again.epoch, "e1");
    // the replay may come before the answer; 6 is a duplicate and is dropped
    socket().answer({ channel: CHANNEL, action: "removed", resource_id: "c5", seq: 6 });
    socket().answer({ channel: CHANNEL, action: "removed", resource_id: "c7", seq: 7 });
    socket().answer({
      type: "subscribed",
      id: again.id,
      channel: CHANNEL,
      seq: 7,
      resumed: true,
      epoch: "e1",
    });
    assert.deepEqual(seen, [5, 6, 7]);
    client.close();
  }
});

test("another epoch answers resumed: false: onReset says so, and events go on", async () => {
  const { client, socket } = scripted();
  const seen = /** @type {number[]} */ ([]);
  const resets = /** @type {import("../chat-engine.js").ResetInfo[]} */ ([]);
  client.subscribe(CHANNEL, { onEvent: (e) => seen.push(e.seq), onReset: (r) => resets.push(r) });
  socket().open();
  const [first] = socket().subscribes();
  socket().answer({ type: "subscribed", id: first.id, channel: CHANNEL, seq: 9, resumed: false, epoch: "old" });
  socket().answer({ channel: CHANNEL, action: "removed", resource_id: "c", seq: 10 });
  const made = ScriptedSocket.made.length;
  socket().serverClose(1006);
  client.reconnectNow(); // no waiting for the back-off
  assert.equal(ScriptedSocket.made.length, made + 1);
  socket().open();
  const [again] = socket().subscribes();
  assert.deepEqual([again.since, again.epoch], [10, "old"]);
  socket().answer({ type: "subscribed", id: again.id, channel: CHANNEL, seq: 2, resumed: false, epoch: "new" });
  socket().answer({ channel: CHANNEL, action: "removed", resource_id: "d", seq: 3 });
  assert.deepEqual(resets, [
    { channel: CHANNEL, seq: 2, epoch: "new", previousSeq: 10, previousEpoch: "old", reason: "epoch" },
  ]);
  assert.deepEqual(seen, [10, 3]);
  client.close();
});

test("1008 is reported and retried only after the longest back-off", async () => {
  const { client, socket, states, errors } = scripted();
  socket().open();
  socket().serverClose(1008, "too many invalid frames");
  assert.equal(errors.at(-1)?.kind, "protocol");
  assert.equal(errors.at(-1)?.code, "1008");
  assert.equal(states.at(-1)?.info.delay, 79); // the maximum, not the first step
  client.close();
});

test("4001 without a hook or token source closes the client for good", async () => {
  const { client, socket, states } = scripted();
  socket().open();
  socket().serverClose(4001, "the token is no longer valid");
  assert.equal(client.state, "closed");
  assert.equal(states.at(-1)?.info.authFailed, true);
  const made = ScriptedSocket.made.length;
  await new Promise((done) => setTimeout(done, 200)); // > 2 maximum back-offs
  assert.equal(ScriptedSocket.made.length, made);
  client.setToken("fresh");
  assert.equal(socket().url, "ws://127.0.0.1:9/ws?token=fresh");
  client.close();
});

test("getToken is asked before every attempt; the revoked token is never used again", async () => {
  const tokens = ["a", "b", "b"];
  const { client, socket } = scripted({ token: undefined, getToken: () => tokens.shift() ?? "" });
  await until(() => ScriptedSocket.made.length === 1, "the first attempt");
  assert.match(socket().url, /token=a$/);
  socket().open();
  socket().serverClose(4001);
  await until(() => ScriptedSocket.made.length === 2, "an attempt with a fresh token");
  assert.match(socket().url, /token=b$/);
  socket().open();
  socket().serverClose(4001);
  await until(() => client.state === "closed", "closed: the source gave the revoked token");
  assert.equal(ScriptedSocket.made.length, 2);
  client.close();
});

test("no answer to a ping: the connection is replaced", async () => {
  const { client, socket } = scripted({ pingInterval: 20, pongTimeout: 20 });
  socket().open();
  await until(() => socket().sent.some((frame) => frame.type === "ping"), "a ping");
  await until(() => ScriptedSocket.made.length === 2, "a new connection");
  assert.equal(ScriptedSocket.made[0].closedWith?.code, 4000);
  client.close();
});

test("a refused subscribe rejects ready and reports onError; the others go on", async () => {
  const { client, socket } = scripted();
  const codes = /** @type {string[]} */ ([]);
  const refused = client.subscribe("/nope", { onError: (error) => codes.push(error.code ?? "") });
  const kept = client.subscribe(CHANNEL);
  socket().open();
  const [a, b] = socket().subscribes();
  socket().answer([
    { type: "error", id: a.id, code: "unknown_channel", detail: "No such channel." },
    { type: "subscribed", id: b.id, channel: CHANNEL, seq: 0, resumed: false, epoch: "e" },
  ]);
  await assert.rejects(refused.ready, /unknown_channel/);
  assert.deepEqual(codes, ["unknown_channel"]);
  assert.equal(refused.active, false);
  assert.equal((await kept.ready).seq, 0);
  kept.unsubscribe();
  assert.deepEqual(socket().sent.at(-1), { type: "unsubscribe", id: b.id + 1, channel: CHANNEL });
  client.close();
});

test("applyEvent keeps a collection's Map current", () => {
  /** @type {Map<string, Record<string, any>>} */
  const items = new Map();
  const base = { channel: CHANNEL, seq: 1 };
  applyEvent(items, { ...base, action: "added", resource_id: "c", resource: { id: "c", n: 1, m: 1 } });
  applyEvent(items, { ...base, action: "changed", resource_id: "c", resource: { id: "c", n: 2 } });
  assert.deepEqual(items.get("c"), { id: "c", n: 2, m: 1 });
  assert.equal(applyEvent(items, { ...base, action: "changed", resource_id: "x", resource: {} }), false);
  applyEvent(items, { ...base, action: "removed", resource_id: "c" });
  assert.equal(items.size, 0);
});

test("channel builders and the msgpack codec", () => {
  assert.equal(
    channels.chatSub(channels.userChats("o", "u"), "c", "presences"),
    "/api/v5/orgs/o/users/u/chats/c/presences",
  );
  const value = {
    type: "subscribe",
    id: 70000,
    channel: "é".repeat(40),
    since: 2 ** 40,
    neg: -200,
    small: -3,
    f: 1.5,
    list: [true, false, null, "x".repeat(300)],
  };
  assert.deepEqual(msgpackDecode(msgpackEncode(value)), value);
  // a frame of two events as the server batches them: an array of maps
  const batch = msgpackDecode(Uint8Array.from([0x92, 0x81, 0xa1, 0x61, 0x01, 0x80]));
  assert.deepEqual(batch, [{ a: 1 }, {}]);
});
