/**
 * The reuse checks of prepare: whether nothing changed since the last prepare (same settings, files and hashes),
 * and which units' ids can be copied from the previous shards instead of tokenized again.
 */
import { UserError } from "../errors.ts";
import { type SourceInfo, streamTokens } from "./shards.ts";
import {
  checkFile,
  type CorpusSurvey,
  type PrepareOptions,
  readOptions,
  unitKey,
} from "./survey.ts";
import { beginStep, type EncodeContext, recordStep, syncStep } from "./tokenize.ts";
import type { Unit } from "./units.ts";

/** Whether nothing changed since the previous prepare: same settings, same files, same hashes. */
export async function unchanged(sv: CorpusSurvey, o: PrepareOptions, shardTokens: number) {
  const { old, files, sizes } = sv;
  if (
    !(old?.files && old.seed === o.seed && old.train_ratio === o.trainRatio &&
      old.shard_tokens === shardTokens && old.files.length === files.length &&
      JSON.stringify(old.options) === JSON.stringify(readOptions(o)) &&
      files.every((f, i) => old.files![i].path === f && old.files![i].bytes === sizes[i]))
  ) return false;
  for (const [i, f] of files.entries()) {
    if ((await checkFile(f, sv.formats[i])).sha256 !== old.files[i].sha256) return false;
  }
  return true;
}

/** The previous records of a unit whose ids can be copied: same bytes, and the same draw for a drawn unit. */
export function reusable(u: Unit, c: EncodeContext): SourceInfo[] | null {
  const { old, oldBy } = c.sv;
  const prev = oldBy.get(unitKey({ path: u.path, row_group: u.rowGroup }));
  if (!old || !prev || prev.some((p) => p.sha256 !== u.sha256)) return null;
  if (u.split === null && (old.seed !== c.o.seed || old.train_ratio !== c.o.trainRatio)) {
    return null;
  }
  return prev;
}

/** Queues the steps that copy an unchanged unit's ids from the previous shards. */
export async function queueReuse(u: Unit, prev: SourceInfo[], c: EncodeContext) {
  const before = { train: [0, 0], val: [0, 0] };
  await c.queue(beginStep(c, before));
  for (const p of prev) {
    await c.queue(Promise.resolve(async () => {
      const w = c.writers[u.split ?? p.split];
      try {
        for (const ids of streamTokens(c.o.shardDir, c.sv.old!, p.split, p.offset, p.tokens)) {
          await w.append(ids);
        }
      } catch (err) {
        throw new UserError(
          `${c.o.shardDir}: the previous shards are damaged (${(err as Error).message}); ` +
            `run prepare with --force`,
        );
      }
      w.documents += p.documents ?? 1;
    }));
  }
  await c.queue(syncStep(() => void c.tally.reusedParts++));
  await c.queue(recordStep(u, c, before));
}
