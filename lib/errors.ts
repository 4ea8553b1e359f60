/**
 * Errors meant for a person: one line naming the file, key and cause. Tasks print the message and exit 2, with no
 * stack trace. Anything else that escapes a task is not the user's input: one line, exit 1.
 */
export class UserError extends Error {
  /** Process exit code for this error (2: bad input; 130: interrupted). */
  readonly exitCode: number;
  constructor(message: string, exitCode = 2) {
    super(message);
    this.name = "UserError";
    this.exitCode = exitCode;
  }
}

/**
 * A failed write of `path` (`what` names it in the message, e.g. "the run log") as one line: exit 2 where the path
 * cannot be written as named (missing, denied, a directory), 1 where the disk is full or failing.
 */
export function cannotWrite(path: string, err: unknown, what = ""): UserError {
  const theirs = err instanceof Deno.errors.NotFound ||
    err instanceof Deno.errors.PermissionDenied ||
    err instanceof Deno.errors.IsADirectory || err instanceof Deno.errors.NotADirectory;
  const msg = err instanceof Error ? err.message : String(err);
  return new UserError(`${path}: cannot write${what ? ` ${what}` : ""} (${msg})`, theirs ? 2 : 1);
}

/**
 * Runs a task's main function: a {@link UserError} prints its one line to stderr and exits with its code; any
 * other error (a kernel's exception, out of memory, a failed write) prints one line and exits 1, with its stack
 * only when `GPT_DEBUG=1`.
 *
 * @example
 * await runTask(async () => { throw new UserError("experiments/x.yaml: model.n_heads: must divide emb_dim"); });
 */
export async function runTask(main: () => Promise<void> | void): Promise<void> {
  try {
    await main();
  } catch (err) {
    if (err instanceof UserError && !(err.exitCode === 1 && debug())) {
      console.error(`error: ${err.message}`);
      Deno.exit(err.exitCode);
    }
    if (debug()) throw err;
    const msg = firstLine(err);
    console.error(`error: internal error (not your input): ${msg} (GPT_DEBUG=1 shows the stack)`);
    Deno.exit(1);
  }
}

/** `GPT_DEBUG=1`: let internal errors keep their stack (false where the task may not read the variable). */
function debug(): boolean {
  try {
    return Deno.env.get("GPT_DEBUG") === "1";
  } catch {
    return false;
  }
}

/** The first line of an error's message (or of the thrown value): what a one-line report shows. */
export function firstLine(err: unknown): string {
  return String(err instanceof Error ? err.message : err).split("\n")[0];
}
