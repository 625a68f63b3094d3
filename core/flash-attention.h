/* Flash-style multi-head scaled dot-product attention.
 *
 * out = softmax(q kᵀ / sqrt(d)) v for every (batch, head), computed block by
 * block with an online softmax, so the [tq, tk] score matrix never exists in
 * memory. Tensors are token-major: row t of q holds all heads, head h at
 * columns [h*d, (h+1)*d). Rows may be further apart than heads*d (a fused
 * qkv buffer is three such views of one buffer with row stride 3*heads*d).
 *
 * Inputs and output share one dtype, f32 or bf16; softmax statistics and
 * accumulation are always fp32. The tile products run on one of (the
 * fastest this CPU and oneDNN offer, see FlashTiles):
 *  - oneDNN's bf16 brgemm ukernel, bf16 inputs only: AVX512-BF16 dot
 *    products, or AMX tiles where the CPU has them (oneDNN picks);
 *  - oneDNN's fp32 brgemm ukernel, bf16 inputs widened to fp32 when packed;
 *  - portable fp32 loops that gcc vectorises for the CPU at hand.
 *
 * Thread-safe; parallel over (batch, head, query block) with OpenMP.
 */
#pragma once

#include <glib.h>
#include <oneapi/dnnl/dnnl.h>

/* The kinds of tile products, slowest first. */
typedef enum {
  FLASH_TILES_AUTO = 0, /* as an upper bound: no bound */
  FLASH_TILES_PORTABLE, /* fp32 loops, no oneDNN ukernel */
  FLASH_TILES_F32,      /* oneDNN fp32 brgemm (bf16 inputs widened) */
  FLASH_TILES_BF16,     /* oneDNN bf16 brgemm: AVX512-BF16 or AMX */
} FlashTiles;

typedef struct {
  int batch, heads, head_dim;
  int q_tokens, kv_tokens;
  dnnl_data_type_t dtype; /* dnnl_f32 or dnnl_bf16, for q, k, v and out */
  /* Base pointers and row strides in elements. Batch b starts at row
   * b * q_tokens (resp. kv_tokens). */
  const void *q, *k, *v;
  void *out;
  size_t q_stride, k_stride, v_stride, out_stride;
  gboolean causal;      /* key j is masked for query i when j > i */
  FlashTiles max_tiles; /* tests and benchmarks: the fastest tiles allowed */
} FlashAttentionArgs;

/* Computes the attention into args->out (which must not overlap q, k, v).
 * FALSE + LCM_ERROR_INVALID for bad arguments, LCM_ERROR_BACKEND when memory
 * runs out. */
gboolean flash_attention(const FlashAttentionArgs *args, GError **error);

/* The tile products flash_attention(args) runs on (never FLASH_TILES_AUTO),
 * or FLASH_TILES_AUTO with an error for bad arguments. */
FlashTiles flash_attention_tiles(const FlashAttentionArgs *args, GError **error);
