/**
 * The dashboard's live stream: one Server-Sent Events response per page. `lines` events carry the complete lines
 * appended to the followed (selected) runs' logs, with the byte offsets read so far as the event id, so that a
 * reconnecting EventSource resumes where it was; `rows` events carry the run list's rows that changed (every row
 * first), so a running run's figures and status stay current whether it is selected or not.
 */
import { listRuns, runLog } from "./runs.ts";

/** How often the followed logs' sizes are looked at (Deno.watchFs misses events on some mounts). */
const LINES_MS = 400;
/** How often the run list is looked at; a changed row reaches the page within this plus a read. */
const ROWS_MS = 500;
const PING_MS = 15_000;
/** The most bytes of one log read per look (a longer catch-up takes several): memory stays flat for any log. */
export const MAX_READ = 256 * 1024;
/** The most bytes queued for a page that does not read them; past it, reading waits for the page. */
const MAX_QUEUED = 512 * 1024;

/** The run list, computed once per half look for all the streams open on `dir`. */
const recent = new Map<string, { at: number; rows: ReturnType<typeof listRuns> }>();
function currentRows(dir: string) {
  const now = performance.now(), hit = recent.get(dir);
  if (hit && now - hit.at < ROWS_MS / 2) return hit.rows;
  const rows = listRuns(dir, ROWS_MS / 2);
  recent.set(dir, { at: now, rows });
  return rows;
}

/** What a stream shares with its server: the set of closers, its slot's release, the path scrubber. */
export interface StreamContext {
  streams: Set<() => void>;
  release: () => void;
  scrub: (text: string) => string;
}

/**
 * The live stream of runs `names` under `dir`. Offsets start from `?from=` (the sizes the page loaded) or the
 * `Last-Event-ID` of a reconnecting EventSource. `ctx.streams` holds a closer per open stream, for shutdown.
 */
export function events(
  req: Request,
  dir: string,
  names: string[],
  { streams, release, scrub }: StreamContext,
): Response {
  const from = new URL(req.url).searchParams.getAll("from").map(Number);
  let offsets: Record<string, number> = {};
  try {
    offsets = JSON.parse(req.headers.get("last-event-id") ?? "null") ?? {};
  } catch { /* a foreign id: start from ?from= */ }
  names.forEach((n, i) => offsets[n] ??= Number.isFinite(from[i]) ? from[i] : 0);
  const enc = new TextEncoder();
  const timers: ReturnType<typeof setInterval>[] = [];
  let closed = false, close = () => {};
  const sent = new Map<string, string>(); // name → the row JSON the page has
  const body = new ReadableStream<Uint8Array>({
    start(ctrl) {
      const send = (s: string) => closed || ctrl.enqueue(enc.encode(scrub(s)));
      const backedUp = () => (ctrl.desiredSize ?? 1) <= 0;
      close = () => {
        if (closed) return;
        closed = true, timers.forEach(clearInterval), streams.delete(close), release();
        try {
          ctrl.close();
        } catch { /* already cancelled */ }
      };
      streams.add(close);
      const lines = () => {
        for (const n of names) {
          const path = runLog(dir, n);
          // a log far ahead of the page is sent a read at a time, as fast as the page takes them
          for (let more = !!path; more && !backedUp();) {
            const got = readNew(path!, offsets, n);
            more = got?.more ?? false;
            if (!got || (!got.lines.length && !got.reset)) continue;
            const data = JSON.stringify({ run: n, lines: got.lines, reset: got.reset });
            send(`id: ${JSON.stringify(offsets)}\nevent: lines\ndata: ${data}\n\n`);
          }
        }
      };
      const rows = () => {
        if (backedUp()) return;
        const all = currentRows(dir);
        const changed = all.filter((r) => sent.get(r.name) !== JSON.stringify(r));
        const gone = [...sent.keys()].some((n) => !all.some((r) => r.name === n));
        if (!changed.length && !gone) return;
        sent.clear(), all.forEach((r) => sent.set(r.name, JSON.stringify(r)));
        const data = JSON.stringify({ names: all.map((r) => r.name), rows: changed });
        send(`event: rows\ndata: ${data}\n\n`);
      };
      send("retry: 1000\n\n");
      rows();
      timers.push(setInterval(lines, LINES_MS), setInterval(rows, ROWS_MS));
      timers.push(setInterval(() => send(": ping\n\n"), PING_MS));
    },
    cancel() {
      close();
    },
  }, new ByteLengthQueuingStrategy({ highWaterMark: MAX_QUEUED }));
  return new Response(body, {
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
  });
}

/**
 * The complete, parsable lines of `path` past `offsets[name]` (null when there are none), advancing the offset
 * past them; at most {@link MAX_READ} bytes per call (a line longer than that is skipped). A file shorter than
 * the offset was replaced (`--fresh`): it is read from the start, with `reset`.
 */
function readNew(
  path: string,
  offsets: Record<string, number>,
  name: string,
): { lines: unknown[]; reset: boolean; more: boolean } | null {
  let f: Deno.FsFile | null = null;
  try {
    const size = Deno.statSync(path).size;
    const reset = size < offsets[name];
    if (reset) offsets[name] = 0;
    if (size === offsets[name] && !reset) return null;
    f = Deno.openSync(path);
    f.seekSync(offsets[name], Deno.SeekMode.Start);
    const buf = new Uint8Array(Math.min(size - offsets[name], MAX_READ));
    let got = 0;
    while (got < buf.length) {
      const n = f.readSync(buf.subarray(got));
      if (!n) break;
      got += n;
    }
    const end = buf.subarray(0, got).lastIndexOf(10); // held back: a line without its newline yet
    const more = got === MAX_READ; // a whole read: the file may hold more past it
    if (end < 0 && more) offsets[name] += got; // no newline in a whole read: skip it
    if (end < 0) return reset || more ? { lines: [], reset, more } : null;
    offsets[name] += end + 1;
    const lines: unknown[] = [];
    for (const raw of new TextDecoder().decode(buf.subarray(0, end)).split("\n")) {
      try {
        if (raw.trim()) lines.push(JSON.parse(raw));
      } catch { /* a foreign line: the run list's row warns about it */ }
    }
    return { lines, reset, more };
  } catch {
    return null;
  } finally {
    f?.close();
  }
}
