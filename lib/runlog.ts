/**
 * The run log: one JSONL file per run (`checkpoints/<name>/log.jsonl`), append-only, one JSON object per line,
 * each line written with a single write so a crash leaves at most a truncated last line.
 */

/** Appends JSON lines to a run log. */
export class RunLog {
  private constructor(private file: Deno.FsFile, readonly path: string) {}

  /** Opens (creating directories and the file when needed) for appending. */
  static open(path: string): RunLog {
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
    Deno.mkdirSync(dir, { recursive: true });
    return new RunLog(Deno.openSync(path, { append: true, create: true }), path);
  }

  /** Appends one line. */
  write(obj: Record<string, unknown>): void {
    const bytes = new TextEncoder().encode(JSON.stringify(obj) + "\n");
    for (let off = 0; off < bytes.length;) off += this.file.writeSync(bytes.subarray(off));
  }

  /** Closes the file. */
  close(): void {
    this.file.close();
  }
}
