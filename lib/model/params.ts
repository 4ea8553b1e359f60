/**
 * A named host-side parameter tensor: the exchange format between initialisation, weight files (safetensors,
 * GPT-2 loading) and the model. Names and layouts are the book's PyTorch `state_dict` ones: Linear weights are
 * [out, in], embeddings [rows, emb_dim], LayerNorm `scale`/`shift`.
 */
export interface NamedParam {
  name: string;
  shape: number[];
  data: Float32Array; // row-major, length = product of shape
}

/** Product of a shape's dimensions. */
export function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
