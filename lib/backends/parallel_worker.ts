/// <reference lib="deno.worker" />
/** Entry of the helper Workers of parallel.ts: runs the ranges of kernels the main thread posts. */
import { serveWorker } from "./parallel.ts";

serveWorker(self);
