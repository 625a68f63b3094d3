/* Flash-style multi-head scaled dot-product attention.
 *
 * out = softmax(q kᵀ / sqrt(d)) v for every (batch, head), computed block by
 * block with an online softmax, so the [tq, tk] score matrix never exists in
 * memory. Tensors are token-major: row t of q holds all heads, head h at
 * columns [h*d, (h+1)*d). Rows may be further apart than heads*d (a fused
 * qkv buffer is three such views of one buffer with row stride 3*heads*d).
 *
 * Inputs and output share one dtype, f32 or bf16; accumulation and softmax
 * are always fp32 (bf16 inputs are widened when K and V are packed, so bf16
 * runs at fp32 speed: there is no AMX tile path yet). The tile products run
 * on oneDNN's fp32 brgemm ukernel where this oneDNN and CPU provide it, else
 * on portable loops that gcc vectorises for the CPU at hand.
 *
 * Thread-safe; parallel over (batch, head, query block) with OpenMP.
 */
#pragma once

#include <glib.h>
#include <oneapi/dnnl/dnnl.h>

typedef struct {
  int batch, heads, head_dim;
  int q_tokens, kv_tokens;
  dnnl_data_type_t dtype; /* dnnl_f32 or dnnl_bf16, for q, k, v and out */
  /* Base pointers and row strides in elements. Batch b starts at row
   * b * q_tokens (resp. kv_tokens). */
  const void *q, *k, *v;
  void *out;
  size_t q_stride, k_stride, v_stride, out_stride;
  gboolean causal;        /* key j is masked for query i when j > i */
  gboolean portable_only; /* tests: never use the oneDNN ukernel */
} FlashAttentionArgs;

/* Computes the attention into args->out (which must not overlap q, k, v).
 * FALSE + LCM_ERROR_INVALID for bad arguments, LCM_ERROR_BACKEND when memory
 * runs out. */
gboolean flash_attention(const FlashAttentionArgs *args, GError **error);
