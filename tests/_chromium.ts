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
  private constructor(private proc: Deno.ChildProcess, private ws: WebSocket, private dir: string) {
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.id !== undefined) this.pending.get(msg.id)?.(msg), this.pending.delete(msg.id);
    };
  }

  /** Starts headless Chromium (flags that also work as root) and attaches to a blank page. */
  static async launch(bin: string, width = 1400, height = 1000): Promise<Browser> {
    const dir = Deno.makeTempDirSync({ prefix: "gpt-ts-chromium-" });
    const proc = new Deno.Command(bin, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        `--user-data-dir=${dir}`,
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
   * Waits until `expression` is truthy in the page; throws after `timeoutMs`, a guard against a hang (a page
   * that never gets there), not a speed goal: the default leaves a slow or loaded machine minutes.
   */
  async waitFor(expression: string, timeoutMs = 300_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (await this.eval(`!!(${expression})`).catch(() => false)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`timed out waiting for ${expression}`);
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
    // exits, so an early remove finds the directory not empty: retry until they are done (3000 tries, 5 minutes,
    // only guard against a hang).
    for (let attempt = 0;; attempt++) {
      try {
        Deno.removeSync(this.dir, { recursive: true });
        return;
      } catch (err) {
        if (attempt >= 3000) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}

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
