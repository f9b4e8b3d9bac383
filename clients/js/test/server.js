// @ts-check
// A real `chat-engine serve` process for the client's tests: a free port on 127.0.0.1,
// a data directory of its own, started, killed (SIGKILL or SIGTERM) and started again on
// the same port and directory. Every wait is bounded.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..", "..");

export const ADMIN_TOKEN = "js-client-test-admin-token";

/** The server's program: CHAT_ENGINE_BIN, else the project's virtualenv. */
export const SERVER_BIN = process.env.CHAT_ENGINE_BIN || join(repo, ".venv", "bin", "chat-engine");

/** Why the tests cannot run here, or null. */
export function missing() {
  if (!existsSync(SERVER_BIN)) return `no server program at ${SERVER_BIN} (run make install)`;
  if (typeof globalThis.WebSocket !== "function") {
    return "no global WebSocket (run node with --experimental-websocket)";
  }
  return null;
}

/** @returns {Promise<number>} a port free on 127.0.0.1 */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/**
 * @param {number} ms
 * @returns {Promise<void>}
 */
export function delay(ms) {
  return new Promise((done) => setTimeout(done, ms));
}

/**
 * Wait until `predicate()` is true, checking every `every` ms, for at most `timeout` ms.
 * @param {() => boolean | Promise<boolean>} predicate
 * @param {string} what named in the error
 * @param {{timeout?: number, every?: number}} [options]
 */
export async function until(predicate, what, options = {}) {
  const timeout = options.timeout ?? 10000;
  const every = options.every ?? 20;
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await delay(every);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
}

export class ServerProcess {
  /** @param {string[]} [extra] more `serve` flags */
  constructor(extra = []) {
    this.extra = extra;
    this.dataDir = mkdtempSync(join(tmpdir(), "chat-engine-js-"));
    this.port = 0;
    /** @type {import("node:child_process").ChildProcess | null} */
    this.child = null;
    this.stderr = "";
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Start (or start again, on the same port and data dir) and wait until ready. */
  async start(timeout = 30000) {
    if (this.port === 0) this.port = await freePort();
    const child = spawn(
      SERVER_BIN,
      [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        String(this.port),
        "--data-dir",
        this.dataDir,
        "--log-level",
        "warning",
        "--rate-limit",
        "off",
        ...this.extra,
      ],
      {
        env: { ...process.env, CHAT_ENGINE_ADMIN_TOKEN: ADMIN_TOKEN },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    this.child = child;
    child.stderr?.on("data", (chunk) => {
      this.stderr = (this.stderr + String(chunk)).slice(-4000);
    });
    /** @type {number | null} */
    let exited = null;
    child.on("exit", (code) => {
      exited = code ?? -1;
    });
    const deadline = Date.now() + timeout;
    while (Date.now() < deadline) {
      if (exited !== null) {
        throw new Error(`the server exited (${exited}) at start:\n${this.stderr}`);
      }
      try {
        const response = await fetch(`${this.baseUrl}/readyz`, {
          signal: AbortSignal.timeout(2000),
        });
        if (response.status === 200) return;
      } catch {
        // not listening yet
      }
      await delay(50);
    }
    this.kill();
    throw new Error(`the server was not ready within ${timeout} ms:\n${this.stderr}`);
  }

  /**
   * Stop the process with `signal` and wait (bounded) until it is gone.
   * @param {NodeJS.Signals} [signal]
   */
  async stop(signal = "SIGKILL", timeout = 20000) {
    const child = this.child;
    if (child === null) return;
    this.child = null;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((done) => child.once("exit", done));
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
    await gone;
    clearTimeout(timer);
  }

  kill() {
    if (this.child !== null && this.child.exitCode === null) this.child.kill("SIGKILL");
    this.child = null;
  }

  /** Stop and remove the data directory. */
  async dispose() {
    await this.stop("SIGKILL");
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
