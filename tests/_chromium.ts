/**
 * Headless Chromium driven over the Chrome DevTools Protocol with Deno's own WebSocket (no driver package): start
 * it, open a page, evaluate expressions in it, wait for conditions, take screenshots, read performance metrics.
 */

/** The Chromium binary, or null when none is installed. */
export function findChromium(): string | null {
  for (const p of ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not here */ }
  }
  return null;
}

/** A browser with one page, closed with {@link Browser.close}. */
export class Browser {
  private id = 0;
  private pending = new Map<number, (msg: Record<string, unknown>) => void>();
  private listeners: { method: string; cb: (params: Record<string, unknown>) => void }[] = [];
  private constructor(private proc: Deno.ChildProcess, private ws: WebSocket, private dir: string) {
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.id !== undefined) this.pending.get(msg.id)?.(msg), this.pending.delete(msg.id);
      else for (const l of this.listeners) if (l.method === msg.method) l.cb(msg.params);
    };
  }

  /**
   * Starts headless Chromium (flags that also work as root, nothing fetched from the network of its own) and
   * attaches to a blank page; `extraArgs` e.g. `--host-resolver-rules=MAP name 127.0.0.1`.
   */
  static async launch(
    bin: string,
    width = 1400,
    height = 1000,
    extraArgs: string[] = [],
  ): Promise<Browser> {
    const dir = Deno.makeTempDirSync({ prefix: "gpt-ts-chromium-" });
    const proc = new Deno.Command(bin, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        `--user-data-dir=${dir}`,
        ...extraArgs,
        "--remote-debugging-port=0",
        `--window-size=${width},${height}`,
        "about:blank",
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const wsUrl = await devtoolsUrl(proc.stderr);
    const port = new URL(wsUrl).port;
    const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    const page = targets.find((t: { type: string }) => t.type === "page");
    const ws = new WebSocket(page.webSocketDebuggerUrl);
    await new Promise((ok, fail) => (ws.onopen = ok, ws.onerror = fail));
    const b = new Browser(proc, ws, dir);
    await b.send("Page.enable");
    await b.send("Performance.enable");
    return b;
  }

  /** Calls `cb` with the params of every CDP event `method` (e.g. `Network.responseReceived`) from now on. */
  on(method: string, cb: (params: Record<string, unknown>) => void): void {
    this.listeners.push({ method, cb });
  }

  /** The browser process's id (its renderers and helpers are its descendants). */
  get pid(): number {
    return this.proc.pid;
  }

  /** Sends one CDP command and returns its result (throws on a protocol error). */
  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = ++this.id;
    this.ws.send(JSON.stringify({ id, method, params }));
    return new Promise((ok, fail) =>
      this.pending.set(
        id,
        (msg) =>
          msg.error
            ? fail(new Error(JSON.stringify(msg.error)))
            : ok(msg.result as Record<string, unknown>),
      )
    );
  }

  /** Navigates and waits for the load event. */
  async goto(url: string): Promise<void> {
    await this.send("Page.navigate", { url });
    await this.waitFor("document.readyState === 'complete'");
  }

  /** The value of a JavaScript expression in the page (awaited when it is a promise). */
  async eval<T = unknown>(expression: string): Promise<T> {
    const r = await this.send("Runtime.evaluate", {
      expression,
      returnByValue: true,
      awaitPromise: true,
    });
    if (r.exceptionDetails) throw new Error(`${expression}: ${JSON.stringify(r.exceptionDetails)}`);
    return (r.result as { value: T }).value;
  }

  /**
   * Waits until `expression` is truthy in the page: it is looked at inside the page every few milliseconds (and
   * again in each new document after a navigation), so the wait ends with the event itself, whatever the
   * machine's speed. `timeoutMs` is only a guard against a hang.
   */
  async waitFor(expression: string, timeoutMs = HANG_GUARD_MS): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const left = Math.max(1, end - Date.now());
      const seen = await this.eval(`new Promise((done) => {
        const end = performance.now() + Math.min(${left}, 2000);
        const look = () => { let v = false; try { v = !!(${expression}); } catch { /* not yet */ }
          if (v || performance.now() > end) done(v); else setTimeout(look, 10); };
        look(); })`).catch(() => false); // a navigation drops the context: look again in the new one
      if (seen) return;
    }
    throw new Error(`waited ${timeoutMs / 1000} s (hang guard) for ${expression}`);
  }

  /** A PNG screenshot of the viewport. */
  async screenshot(): Promise<Uint8Array> {
    const r = await this.send("Page.captureScreenshot", { format: "png" });
    return Uint8Array.from(atob(r.data as string), (c) => c.charCodeAt(0));
  }

  /** CDP Performance.getMetrics as a name → value map (JSHeapUsedSize, …). */
  async metrics(): Promise<Record<string, number>> {
    const r = await this.send("Performance.getMetrics");
    return Object.fromEntries(
      (r.metrics as { name: string; value: number }[]).map((m) => [m.name, m.value]),
    );
  }

  /** Closes the page's socket, ends Chromium and removes its profile. */
  async close(): Promise<void> {
    this.ws.close();
    try {
      this.proc.kill("SIGTERM");
    } catch { /* already gone */ }
    await this.proc.status;
    // Chromium's helper processes (crashpad, zygote) can still write into the profile after the browser process
    // exits, so a remove can find the directory not empty: try again until it is gone (a guard against a hang).
    const end = Date.now() + HANG_GUARD_MS;
    for (;;) {
      try {
        Deno.removeSync(this.dir, { recursive: true });
        return;
      } catch (err) {
        if (Date.now() > end) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }
}

/** How long a wait may last before it counts as a hang (generous: a loaded 2-core machine is slow). */
export const HANG_GUARD_MS = 180_000;

/** Reads Chromium's stderr up to `DevTools listening on ws://…`, then keeps draining it. */
async function devtoolsUrl(stderr: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`chromium exited before its DevTools URL: ${text}`);
    text += value;
    const m = text.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) {
      (async () => {
        while (!(await reader.read()).done) { /* drain */ }
      })();
      return m[1];
    }
  }
}
