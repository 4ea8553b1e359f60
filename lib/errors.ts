/**
 * Errors meant for a person: one line naming the file, key and cause. Tasks print the message and exit 2, with no
 * stack trace. Anything else that escapes a task is a bug and keeps its stack.
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
 * Runs a task's main function: a {@link UserError} prints its one line to stderr and exits with its code.
 *
 * @example
 * await runTask(async () => { throw new UserError("experiments/x.yaml: model.n_heads: must divide emb_dim"); });
 */
export async function runTask(main: () => Promise<void> | void): Promise<void> {
  try {
    await main();
  } catch (err) {
    if (err instanceof UserError) {
      console.error(`error: ${err.message}`);
      Deno.exit(err.exitCode);
    }
    throw err;
  }
}
