// @ts-check
// The client against a real `chat-engine serve`: events once and in order (JSON and
// msgpack), a SIGTERM (1001) and a kill -9 of the server mid-subscription with no gap and
// no duplicate, `resumed: false` turned into onReset, and 4001 after a visitor re-key
// surfaced without a reconnect loop.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { ChatEngineClient } from "../chat-engine.js";
import { FAST_BACKOFF, assertContiguous, makeWorld, record } from "./helpers.js";
import { ServerProcess, delay, freePort, missing, until } from "./server.js";

const skip = missing();
if (skip !== null && process.env.CHAT_ENGINE_REQUIRE_NODE === "1") {
  throw new Error(`CHAT_ENGINE_REQUIRE_NODE=1, but ${skip}`);
}
if (skip !== null) console.log(`# SKIP client tests against a real server: ${skip}`);

/** @type {ChatEngineClient[]} */
const clients = [];

/**
 * A client whose every state change is recorded, closed when the file ends.
 * @param {import("../chat-engine.js").ClientOptions} options
 */
function open(options) {
  /** @type {{state: string, code?: number}[]} */
  const states = [];
  const client = new ChatEngineClient({
    backoff: FAST_BACKOFF,
    ...options,
    onStateChange: (state, info) => {
      states.push({ state, code: info.code });
      options.onStateChange?.(state, info);
    },
  });
  clients.push(client);
  return { client, states };
}

after(() => {
  for (const client of clients) client.close();
});

describe("against a real server", { skip: skip ?? undefined, timeout: 180000 }, () => {
  /** @type {ServerProcess} */
  let server;
  /** @type {Awaited<ReturnType<typeof makeWorld>>} */
  let world;

  before(async () => {
    server = new ServerProcess();
    await server.start();
    world = await makeWorld(server.baseUrl);
  });

  after(async () => {
    await server?.dispose();
  });

  test("every event arrives once and in seq order, in JSON and in msgpack", async () => {
    const operator = open({ url: server.wsUrl, token: world.user.token });
    const visitor = open({ url: server.wsUrl, token: world.visitor.token, encoding: "msgpack" });
    const room = record(operator.client, world.roomMessages);
    const own = record(visitor.client, world.visitorMessages);
    const [roomReady, ownReady] = await Promise.all([
      room.subscription.ready,
      own.subscription.ready,
    ]);
    assert.equal(roomReady.resumed, false);
    const head = roomReady.seq;
    assert.equal(ownReady.seq, head);

    /** @type {string[]} */
    const posted = [];
    for (let i = 0; i < 30; i++) {
      const message =
        i % 2 === 0
          ? await world.visitorPost(`visitor ${i}`)
          : await world.operatorPost(`operator ${i}`);
      posted.push(message.id);
    }
    await until(() => room.events.length >= 30 && own.events.length >= 30, "30 events each");
    for (const recorded of [room, own]) {
      assertContiguous(recorded.events, head + 1);
      assert.deepEqual(
        recorded.events.map((event) => event.resource_id),
        posted,
      );
      assert.ok(recorded.events.every((event) => event.action === "added"));
    }
    // the visitor's view of a message has no operator-only field
    assert.equal(own.events[1].resource?.sender_name, undefined);
    assert.equal(typeof room.events[1].resource?.sender_name, "string");
    assert.equal(room.resets.length + own.resets.length, 0);
    operator.client.close();
    visitor.client.close();
    assert.equal(operator.client.state, "closed");
  });

  test("a SIGTERM and a kill -9 of the server lose and double nothing", async () => {
    const operator = open({ url: server.wsUrl, token: world.user.token });
    const room = record(operator.client, world.roomMessages);
    const ready = await room.subscription.ready;
    const before = ready.seq;
    for (let i = 0; i < 5; i++) await world.visitorPost(`before ${i}`);
    await until(() => room.events.length === 5, "the first 5 events");

    // SIGTERM: the server drains and closes the session with 1001
    await server.stop("SIGTERM");
    await server.start();
    for (let i = 0; i < 5; i++) await world.visitorPost(`after the drain ${i}`);
    await until(() => room.events.length === 10, "10 events after the drain", {
      timeout: 20000,
    });
    assert.ok(
      operator.states.some((s) => s.code === 1001),
      `a 1001 close: ${JSON.stringify(operator.states)}`,
    );

    // kill -9 while a writer posts without pause: before, during and after the restart
    let writing = true;
    let written = 0;
    let writtenAfterRestart = 0;
    let restarted = false;
    const writer = (async () => {
      const stopAt = Date.now() + 40000;
      for (let i = 0; writing && i < 2000 && Date.now() < stopAt; i++) {
        try {
          await world.visitorPost(`during ${i}`);
          written += 1;
          if (restarted) writtenAfterRestart += 1;
        } catch {
          await delay(25); // the server is down: try again shortly
        }
      }
    })();
    await until(() => written >= 10, "10 writes before the kill");
    await server.stop("SIGKILL");
    await server.start();
    restarted = true;
    await until(() => writtenAfterRestart >= 10, "10 writes after the restart", {
      timeout: 20000,
    });
    writing = false;
    await writer;
    await until(() => operator.client.state === "open", "the client open again", {
      timeout: 20000,
    });
    for (let i = 0; i < 5; i++) await world.operatorPost(`after ${i}`);

    const history = await world.history();
    const expected = history.slice(before).map((message) => message.id);
    await until(() => room.events.length >= expected.length, `${expected.length} events`, {
      timeout: 20000,
    });
    assertContiguous(room.events, before + 1);
    assert.deepEqual(
      room.events.map((event) => event.resource_id),
      expected,
    );
    assert.equal(room.resets.length, 0, "resumed every time");
    assert.ok(room.answers.length >= 3, "subscribed again after each restart");
    assert.ok(room.answers.slice(1).every((answer) => answer.resumed));
  });

  test("4001 after a visitor re-key stops the client; a fresh token resumes it", async () => {
    let constructed = 0;
    const Counting = class extends WebSocket {
      /** @param {string} url @param {string | string[]} [protocols] */
      constructor(url, protocols) {
        super(url, protocols);
        constructed += 1;
      }
    };
    /** @type {import("../chat-engine.js").AuthErrorInfo[]} */
    const authErrors = [];
    /** @type {() => Promise<string | undefined>} */
    let freshToken = async () => undefined;
    const visitor = open({
      url: server.wsUrl,
      token: world.visitor.token,
      WebSocket: Counting,
      onAuthError: (info) => {
        authErrors.push(info);
        return freshToken();
      },
    });
    const own = record(visitor.client, world.visitorMessages);
    const ready = await own.subscription.ready;
    await world.operatorPost("hello");
    await until(() => own.events.length === 1, "the first event");

    // the org registers the visitor again: a fresh token, and the old one stops working
    const rekeyed = await world.orgHttp.registerOrgVisitor(world.org.id, {
      id: world.visitor.id,
    });
    await until(
      () => visitor.client.state === "closed" && authErrors.length === 1,
      "closed by 4001",
    );
    assert.equal(authErrors[0].code, 4001);
    assert.deepEqual(visitor.states.at(-1), { state: "closed", code: 4001 });
    const made = constructed;
    await world.operatorPost("while the visitor is away");
    await delay(5 * FAST_BACKOFF.maxDelay); // long enough for several reconnects: none
    assert.equal(constructed, made, "no reconnect with the revoked token");
    assert.equal(visitor.client.state, "closed");
    assert.equal(authErrors.length, 1);

    // the caller hands the new token over: the client resumes where it stood
    visitor.client.setToken(rekeyed.token);
    await until(() => own.events.length === 2, "the event missed while closed");
    assert.equal(own.resets.length, 0);

    // again, this time the hook answers with the fresh token itself
    /** @type {Promise<{id: string, token: string}>} */
    let second = Promise.resolve({ id: "", token: "" });
    freshToken = async () => (await second).token;
    second = world.orgHttp.registerOrgVisitor(world.org.id, { id: world.visitor.id });
    await second;
    await until(() => authErrors.length === 2, "the second 4001");
    await until(() => visitor.client.state === "open", "open with the hook's token");
    await world.operatorPost("welcome back");
    await until(() => own.events.length === 3, "the third event");
    assertContiguous(own.events, ready.seq + 1);
    assert.equal(own.resets.length, 0);
  });
});

describe("resume beyond the history", { skip: skip ?? undefined, timeout: 120000 }, () => {
  /** @type {ServerProcess} */
  let server;

  before(async () => {
    server = new ServerProcess(["--history-limit", "3"]);
    await server.start();
  });

  after(async () => {
    await server?.dispose();
  });

  test("resumed: false calls onReset; the caller refetches and events go on", async () => {
    const world = await makeWorld(server.baseUrl);
    const deadPort = await freePort(); // nothing listens there: a lost network
    const gate = { closed: false };
    /** @type {WebSocket[]} */
    const sockets = [];
    const Gated = class extends WebSocket {
      /** @param {string} url @param {string | string[]} [protocols] */
      constructor(url, protocols) {
        super(gate.closed ? url.replace(`:${server.port}/`, `:${deadPort}/`) : url, protocols);
        sockets.push(this);
      }
    };
    /** @type {unknown[][]} */
    const refetched = [];
    const operator = open({ url: server.wsUrl, token: world.user.token, WebSocket: Gated });
    const room = record(operator.client, world.roomMessages, {
      onReset: () => {
        world.history().then((items) => refetched.push(items));
      },
    });
    await room.subscription.ready;
    await world.visitorPost("one");
    await world.visitorPost("two");
    await until(() => room.events.length === 2, "2 events");

    gate.closed = true;
    sockets.at(-1)?.close(); // the connection drops; reconnecting fails while the gate is shut
    await until(() => operator.client.state === "reconnecting", "reconnecting");
    for (let i = 0; i < 5; i++) await world.visitorPost(`missed ${i}`); // history keeps 3
    gate.closed = false;

    await until(() => room.resets.length === 1, "onReset");
    const reset = room.resets[0];
    assert.equal(reset.previousSeq, 2);
    assert.equal(reset.seq, 7);
    assert.equal(reset.reason, "history");
    assert.equal(reset.epoch, reset.previousEpoch);
    await until(() => refetched.length === 1, "the refetch");
    assert.equal(refetched[0].length, 7);

    await world.operatorPost("live again");
    await until(() => room.events.length === 3, "the live event");
    assert.deepEqual(
      room.events.map((event) => event.seq),
      [1, 2, 8],
    );
  });
});
