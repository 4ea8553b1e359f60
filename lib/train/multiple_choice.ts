/**
 * A score beyond loss: multiple-choice items in HellaSwag's published form (one JSON object a line with `ctx`,
 * `endings` and `label`), scored as llm.c and Karpathy's GPT-2 reproduction score HellaSwag. Each ending is
 * appended to the context (`ctx` tokens, then those of " " + ending), the model's cross-entropy of each ending
 * token is taken in eval mode, and the ending with the lowest summed loss is the pick for `acc`, the one with the
 * lowest mean loss per token for `acc_norm`. A row longer than the context window keeps its last
 * `context_length` tokens (the start of the context cut first); a row's first token is never scored (nothing
 * predicts it).
 */
import * as tf from "@tensorflow/tfjs-core";
import { withHelpersHeld } from "../backends/backend.ts";
import { UserError } from "../errors.ts";
import type { GPTModel } from "../model/model.ts";
import { textToTokenIds } from "../data/tokenizer.ts";

/** One item: a context, its candidate endings, the index of the right one. */
export interface ChoiceItem {
  ctx: string;
  endings: string[];
  label: number;
}

/** What the model made of one item: per ending, the summed and the mean loss of its tokens; the two picks. */
export interface ItemScore {
  sumLoss: number[];
  meanLoss: number[];
  pick: number; // argmin of sumLoss
  pickNorm: number; // argmin of meanLoss
}

/** Scores over a set of items (fractions right) and how many. */
export interface ChoiceScores {
  items: number;
  acc: number;
  acc_norm: number;
}

/** Reads a JSONL file of items; a bad line is one UserError naming the file, the line and the cause. */
export async function readChoiceItems(path: string): Promise<ChoiceItem[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new UserError(
      `${path}: cannot read the multiple-choice items (${
        err instanceof Deno.errors.NotFound ? "no such file" : (err as Error).message
      })`,
    );
  }
  const items = text.split("\n").flatMap((line, i) =>
    line.trim() ? [itemOf(path, i + 1, line)] : []
  );
  if (items.length === 0) throw new UserError(`${path}: no multiple-choice items`);
  return items;
}

function itemOf(path: string, n: number, line: string): ChoiceItem {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(line);
  } catch {
    throw new UserError(`${path}:${n}: not a JSON object`);
  }
  const bad = (why: string) => new UserError(`${path}:${n}: ${why}`);
  if (typeof v?.ctx !== "string") throw bad("ctx: expected a string");
  const e = v.endings;
  if (!Array.isArray(e) || e.length < 2 || !e.every((x) => typeof x === "string" && x.length > 0)) {
    throw bad("endings: expected two or more non-empty strings");
  }
  const label = Number(v.label); // HellaSwag's file writes it as a number; some copies as a string
  if (!Number.isInteger(label) || label < 0 || label >= e.length) {
    throw bad(`label: ${JSON.stringify(v.label)} is not an index of the ${e.length} endings`);
  }
  return { ctx: v.ctx, endings: e as string[], label };
}

/** Token rows of an item's endings: context + ending, cut to the window; `from` is the first ending token. */
function rows(item: ChoiceItem, window: number): { ids: number[]; from: number }[] {
  const ctx = textToTokenIds(item.ctx);
  return item.endings.map((ending) => {
    const end = textToTokenIds(" " + ending);
    const ids = [...ctx, ...end].slice(-window);
    return { ids, from: Math.max(1, ids.length - end.length) }; // the first token has nothing to predict it
  });
}

/** Scores one item: its endings as one batch, right-padded (causal attention keeps padding out of the rest). */
export async function scoreItem(model: GPTModel, item: ChoiceItem): Promise<ItemScore> {
  const r = rows(item, model.cfg.context_length);
  const T = Math.max(...r.map((x) => x.ids.length));
  const padded = r.flatMap(({ ids }) => [...ids, ...new Array(T - ids.length).fill(0)]);
  // (B, T, V) log-probabilities, eval mode
  const logp = tf.tidy(() =>
    tf.logSoftmax(model.forward(tf.tensor2d(padded, [r.length, T], "int32")))
  );
  const lp = await logp.data() as Float32Array;
  logp.dispose();
  const V = lp.length / (r.length * T);
  const sumLoss = r.map(({ ids, from }, b) => {
    let s = 0;
    for (let t = from; t < ids.length; t++) s -= lp[(b * T + t - 1) * V + ids[t]];
    return s;
  });
  const meanLoss = sumLoss.map((s, b) => s / (r[b].ids.length - r[b].from));
  const argmin = (xs: number[]) => xs.indexOf(Math.min(...xs));
  return { sumLoss, meanLoss, pick: argmin(sumLoss), pickNorm: argmin(meanLoss) };
}

/** acc and acc_norm of `model` over `items`. */
export async function scoreChoices(model: GPTModel, items: ChoiceItem[]): Promise<ChoiceScores> {
  return await withHelpersHeld(async () => {
    let right = 0, rightNorm = 0;
    for (const item of items) {
      const s = await scoreItem(model, item);
      if (s.pick === item.label) right++;
      if (s.pickNorm === item.label) rightNorm++;
    }
    return { items: items.length, acc: right / items.length, acc_norm: rightNorm / items.length };
  });
}
