/// <reference lib="deno.worker" />
/**
 * Entry of the pool's helper Workers (pool.ts): loads every module that registers kernels, then runs the ranges
 * of kernels the main thread posts.
 */
import { serveWorker } from "./pool.ts";
import "./row_kernels.ts";
import "./matrix/split_products.ts";
import "./bf16.ts";

serveWorker(self);
