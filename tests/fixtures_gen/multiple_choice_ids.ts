/**
 * Prints the GPT-2 token ids of each multiple-choice item's context and of " " + each ending, as JSON lines, encoded
 * by js-tiktoken directly (not this project's code), for tests/fixtures_gen/multiple_choice.py.
 * Usage: deno run --allow-read tests/fixtures_gen/multiple_choice_ids.ts <items.jsonl>
 */
import { getEncoding } from "js-tiktoken";

const enc = getEncoding("gpt2");
for (const line of (await Deno.readTextFile(Deno.args[0])).split("\n")) {
  if (!line.trim()) continue;
  const item = JSON.parse(line);
  const endings = item.endings.map((e: string) => enc.encode(" " + e));
  console.log(JSON.stringify({ ctx: enc.encode(item.ctx), endings, label: item.label }));
}
