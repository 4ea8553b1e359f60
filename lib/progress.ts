/**
 * A one-line progress display for long loops: step, loss, tokens/s and ETA. On a terminal it redraws one line on
 * stderr; otherwise (logs, CI) it prints a line at most every `everyS` seconds.
 */

/** Formats seconds as `1h02m`, `3m05s` or `42s`. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(sec).padStart(2, "0")}s`;
  return `${sec}s`;
}

/**
 * A count with its noun, singular for one: `1 batch`, `9 batches`, `1 epoch`, `10 epochs`, `1 shard`. Nouns in
 * -s, -sh, -x and a -ch said "tch" take -es; a -ch said "k" (epoch) takes -s.
 */
export function countOf(n: number, noun: string): string {
  if (n === 1) return `1 ${noun}`;
  return `${n} ${noun}${/(s|sh|x|[^o]ch)$/.test(noun) ? "es" : "s"}`;
}

/**
 * A size in bytes as people read it, in powers of 1000 like the MB/s figures: `812 B`, `30.1 KB`, `4.2 MB`,
 * `1.35 GB`. With `/s` after it, a rate: `30.1 KB/s`.
 */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return "?";
  if (n < 1e3) return `${Math.round(n)} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} KB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

export class Progress {
  private readonly tty = Deno.stderr.isTerminal();
  private lastPrint = 0;
  private dirty = false;

  constructor(readonly totalSteps: number, readonly everyS = 30) {}

  /** Shows the state after `step` of `totalSteps`; `etaS` is the estimated time left. */
  update(
    fields: {
      epoch: number;
      epochs: number;
      step: number;
      loss: number;
      tokensPerS: number;
      etaS: number;
      mfu?: number; // model FLOPs utilisation, a fraction
    },
  ) {
    const mfu = fields.mfu === undefined ? "" : ` | MFU ${(fields.mfu * 100).toFixed(1)}%`;
    const line = `ep ${fields.epoch}/${fields.epochs} step ${fields.step}/${this.totalSteps} ` +
      `loss ${fields.loss.toFixed(3)} | ${fields.tokensPerS.toFixed(0)} tok/s${mfu} | ETA ${
        formatDuration(fields.etaS)
      }`;
    const now = performance.now();
    if (this.tty) {
      Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${line}`));
      this.dirty = true;
    } else if (now - this.lastPrint >= this.everyS * 1000 || fields.step === this.totalSteps) {
      console.error(line);
      this.lastPrint = now;
    }
  }

  /** Clears the progress line before other output, so log lines are not interleaved with it. */
  clear(): void {
    if (this.tty && this.dirty) {
      Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
      this.dirty = false;
    }
  }
}
