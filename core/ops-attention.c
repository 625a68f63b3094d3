/* Multi-head attention as a chain of primitives over query blocks:
 * scores = (Q Kᵀ) * scale -> softmax -> probabilities V, per batch item and
 * group of heads. Q, K, V and the output stay token-major; each head is a
 * strided view, so nothing is transposed. The scores and the softmax input
 * are fp32 whatever the compute dtype: scores rounded to bf16 (an absolute
 * error of ~0.03 at 10) would change their exponentials by percents. */
#include "flash-attention.h"
#include "ops-internal.h"

#include <math.h>
#include <stdlib.h>

#define DEFAULT_CHUNK 512
/* Scores of one call stay near L2-sized: heads are grouped up to this. */
#define SCORES_BUDGET (4u << 20)

/* Token-major operands: row r of sequence b is at base + (b*tokens + r)*ld. */
typedef struct {
  int n, tq, tk, heads, head_dim;
  const char *q, *k, *v;
  int ld_q, ld_kv;
  gboolean causal;
} AttentionArgs;

typedef struct {
  const Primitive *qk, *softmax, *pv;
} AttentionPrimitives;

static const Primitive *cached_matmul(Ops *ops, const char *key, dnnl_memory_desc_t a,
                                      dnnl_memory_desc_t b, dnnl_memory_desc_t c,
                                      dnnl_post_ops_t post_ops, GError **error) {
  const Primitive *p = ops_primitive_lookup(ops, key);
  if (!p) {
    dnnl_primitive_attr_t attr = ops_attr_new(post_ops);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t status = dnnl_matmul_primitive_desc_create(&pd, ops->engine, a, b, NULL, c, attr);
    dnnl_primitive_attr_destroy(attr);
    p = ops_primitive_add(ops, key, status, pd, "creating an attention matmul", error);
  }
  if (post_ops) dnnl_post_ops_destroy(post_ops);
  dnnl_memory_desc_destroy(a);
  dnnl_memory_desc_destroy(b);
  dnnl_memory_desc_destroy(c);
  return p;
}

/* The three primitives for `group` heads and `rows` queries. */
static gboolean attention_primitives(Ops *ops, const AttentionArgs *a, int group, int rows,
                                     int ld_out, AttentionPrimitives *out, GError **error) {
  const dnnl_data_type_t dt = ops->dtype;
  const int d = a->head_dim, tk = a->tk;
  const dnnl_dim_t q_dims[3] = {group, rows, d}, q_strides[3] = {d, a->ld_q, 1};
  const dnnl_dim_t kt_dims[3] = {group, d, tk}, kt_strides[3] = {d, 1, a->ld_kv};
  const dnnl_dim_t v_dims[3] = {group, tk, d}, v_strides[3] = {d, a->ld_kv, 1};
  const dnnl_dim_t o_strides[3] = {d, ld_out, 1};
  const dnnl_dim_t s_dims[3] = {group, rows, tk};

  char *key = g_strdup_printf("attn qk g%d r%d d%d tk%d ld%d,%d dt%d", group, rows, d, tk, a->ld_q,
                              a->ld_kv, (int)dt);
  dnnl_post_ops_t scale = NULL;
  dnnl_post_ops_create(&scale);
  dnnl_post_ops_append_eltwise(scale, dnnl_eltwise_linear, 1.0f / sqrtf((float)d), 0.0f);
  out->qk = cached_matmul(ops, key, ops_md_strided(3, q_dims, dt, q_strides),
                          ops_md_strided(3, kt_dims, dt, kt_strides),
                          ops_md(3, s_dims, dnnl_f32, dnnl_abc), scale, error);
  g_free(key);
  if (!out->qk) return FALSE;

  key = g_strdup_printf("attn pv g%d r%d d%d tk%d ld%d,%d dt%d", group, rows, d, tk, a->ld_kv,
                        ld_out, (int)dt);
  out->pv = cached_matmul(ops, key, ops_md(3, s_dims, dt, dnnl_abc),
                          ops_md_strided(3, v_dims, dt, v_strides),
                          ops_md_strided(3, q_dims, dt, o_strides), NULL, error);
  g_free(key);
  if (!out->pv) return FALSE;

  key = g_strdup_printf("attn softmax g%d r%d tk%d dt%d", group, rows, tk, (int)dt);
  out->softmax = ops_primitive_lookup(ops, key);
  if (!out->softmax) {
    dnnl_memory_desc_t scores_md = ops_md(3, s_dims, dnnl_f32, dnnl_abc);
    dnnl_memory_desc_t probs_md = ops_md(3, s_dims, dt, dnnl_abc);
    dnnl_primitive_attr_t attr = ops_attr_new(NULL);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t status = dnnl_softmax_forward_primitive_desc_create(
        &pd, ops->engine, dnnl_forward_inference, dnnl_softmax_accurate, scores_md, probs_md, 2,
        attr);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(scores_md);
    dnnl_memory_desc_destroy(probs_md);
    out->softmax = ops_primitive_add(ops, key, status, pd, "creating a softmax", error);
  }
  g_free(key);
  return out->softmax != NULL;
}

/* Hides keys after each query (query q0+i sees keys 0..q0+i). */
static void mask_future(float *scores, int group, int rows, int tk, int q0) {
#pragma omp parallel for collapse(2)
  for (int g = 0; g < group; g++)
    for (int i = 0; i < rows; i++)
      for (int j = q0 + i + 1; j < tk; j++) scores[((size_t)g * rows + i) * tk + j] = -INFINITY;
}

static gboolean is_reference(const Primitive *p) {
  const char *impl = NULL;
  dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &impl);
  return impl && g_str_has_prefix(impl, "ref");
}

/* Heads per primitive call: as many as keep the scores near L2-sized, unless
 * oneDNN has only its reference kernel for batched strided heads. */
static int heads_per_call(const AttentionArgs *a, int rows, Ops *ops, int ld_out) {
  int group = 1;
  for (int g = 1; g <= a->heads; g++)
    if (a->heads % g == 0 && (size_t)g * rows * a->tk * sizeof(float) <= SCORES_BUDGET) group = g;
  AttentionPrimitives prims = {NULL, NULL, NULL};
  if (group > 1 && (!attention_primitives(ops, a, group, rows, ld_out, &prims, NULL) ||
                    is_reference(prims.qk) || is_reference(prims.pv)))
    group = 1;
  return group;
}

/* The flash kernel (brgemm tiles, online softmax) beats the primitive chain
 * about 2x at 4096 queries and 1.2x at 1024 on AVX2 in fp32; below ~1000
 * queries they are even. In bf16 on AVX512-BF16 (bf16 tiles) it is 1.9x
 * faster at 4096 queries and (TODO) at 1024. A forced chunk size (tests,
 * benchmarks) selects the chain. */
#define FLASH_MIN_QUERIES 1024

static gboolean use_flash(const Ops *ops, const AttentionArgs *a) {
  return ops->attention_chunk <= 0 && a->tq >= FLASH_MIN_QUERIES;
}

static Tensor *attention_flash(Ops *ops, const AttentionArgs *a, GError **error) {
  const int channels = a->heads * a->head_dim;
  Tensor *out = tensor_try_new(a->n, 1, a->tq, channels, ops->dtype, error);
  if (!out) return NULL;
  const FlashAttentionArgs args = {.batch = a->n,
                                   .heads = a->heads,
                                   .head_dim = a->head_dim,
                                   .q_tokens = a->tq,
                                   .kv_tokens = a->tk,
                                   .dtype = ops->dtype,
                                   .q = a->q,
                                   .k = a->k,
                                   .v = a->v,
                                   .out = out->data,
                                   .q_stride = (size_t)a->ld_q,
                                   .k_stride = (size_t)a->ld_kv,
                                   .v_stride = (size_t)a->ld_kv,
                                   .out_stride = (size_t)channels,
                                   .causal = a->causal};
  if (!flash_attention(&args, error)) {
    tensor_free(out);
    return NULL;
  }
  return out;
}

static Tensor *attention_run(Ops *ops, const AttentionArgs *a, GError **error) {
  if (use_flash(ops, a)) return attention_flash(ops, a, error);
  const int channels = a->heads * a->head_dim;
  const size_t elt = dtype_size(ops->dtype);
  const int chunk = MIN(ops->attention_chunk > 0 ? ops->attention_chunk : DEFAULT_CHUNK, a->tq);
  const int group = heads_per_call(a, chunk, ops, channels);
  Tensor *out = tensor_try_new(a->n, 1, a->tq, channels, ops->dtype, error);
  if (!out) return NULL;
  const size_t n_scores = (size_t)group * chunk * a->tk;
  float *scores = aligned_buffer(n_scores * sizeof(float));
  /* fp32 probabilities overwrite their scores; bf16 ones need their own room */
  void *probs = ops->dtype == dnnl_f32 ? (void *)scores : aligned_buffer(n_scores * elt);
  if (!scores || !probs) {
    if (probs != scores) free(probs);
    free(scores);
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "attention: out of memory for the scores");
    tensor_free(out);
    return NULL;
  }
  gboolean ok = TRUE;
  for (int q0 = 0; q0 < a->tq && ok; q0 += chunk) {
    const int rows = MIN(chunk, a->tq - q0);
    AttentionPrimitives prims = {NULL, NULL, NULL};
    ok = attention_primitives(ops, a, group, rows, channels, &prims, error);
    for (int b = 0; b < a->n && ok; b++)
      for (int h0 = 0; h0 < a->heads && ok; h0 += group) {
        const size_t col = (size_t)h0 * a->head_dim;
        const char *q = a->q + (((size_t)b * a->tq + q0) * a->ld_q + col) * elt;
        const char *k = a->k + ((size_t)b * a->tk * a->ld_kv + col) * elt;
        const char *v = a->v + ((size_t)b * a->tk * a->ld_kv + col) * elt;
        char *o = (char *)out->data + (((size_t)b * a->tq + q0) * channels + col) * elt;
        const OpsArg qk[3] = {{DNNL_ARG_SRC, q}, {DNNL_ARG_WEIGHTS, k}, {DNNL_ARG_DST, scores}};
        const OpsArg softmax[2] = {{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, probs}};
        const OpsArg pv[3] = {{DNNL_ARG_SRC, probs}, {DNNL_ARG_WEIGHTS, v}, {DNNL_ARG_DST, o}};
        ok = ops_execute(ops, prims.qk, qk, 3, error);
        if (ok && a->causal) mask_future(scores, group, rows, a->tk, q0);
        ok = ok && ops_execute(ops, prims.softmax, softmax, 2, error) &&
             ops_execute(ops, prims.pv, pv, 3, error);
      }
  }
  if (probs != scores) free(probs);
  free(scores);
  if (!ok) {
    tensor_free(out);
    return NULL;
  }
  return out;
}

static gboolean check_heads(int channels, int heads, GError **error) {
  if (heads > 0 && channels % heads == 0) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "attention: %d channels do not split into %d heads", channels, heads);
  return FALSE;
}

Tensor *attention(Ops *ops, const Tensor *q, const Tensor *k, const Tensor *v, int heads,
                  gboolean causal, GError **error) {
  if (!ops_check_tensor(ops, q, "attention", "query", 0, error) ||
      !ops_check_tensor(ops, k, "attention", "key", q->c, error) ||
      !ops_check_tensor(ops, v, "attention", "value", q->c, error) ||
      !check_heads(q->c, heads, error))
    return NULL;
  const int tq = q->h * q->w, tk = k->h * k->w;
  if (k->n != q->n || v->n != q->n || v->h * v->w != tk) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "attention: query, key and value hold %dx%d, %dx%d and %dx%d (batch x tokens)",
                q->n, tq, k->n, tk, v->n, v->h * v->w);
    return NULL;
  }
  const AttentionArgs a = {.n = q->n,
                           .tq = tq,
                           .tk = tk,
                           .heads = heads,
                           .head_dim = q->c / heads,
                           .q = q->data,
                           .k = k->data,
                           .v = v->data,
                           .ld_q = q->c,
                           .ld_kv = k->c,
                           .causal = causal};
  return attention_run(ops, &a, error);
}

Tensor *attention_fused_qkv(Ops *ops, const Tensor *qkv, int heads, gboolean causal,
                            GError **error) {
  if (!ops_check_tensor(ops, qkv, "attention", "qkv", 0, error)) return NULL;
  if (qkv->c % 3 != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "attention: fused qkv has %d channels, not a multiple of 3", qkv->c);
    return NULL;
  }
  const int channels = qkv->c / 3, tokens = qkv->h * qkv->w;
  if (!check_heads(channels, heads, error)) return NULL;
  const size_t elt = dtype_size(ops->dtype);
  const char *base = qkv->data;
  const AttentionArgs a = {.n = qkv->n,
                           .tq = tokens,
                           .tk = tokens,
                           .heads = heads,
                           .head_dim = channels / heads,
                           .q = base,
                           .k = base + channels * elt,
                           .v = base + 2 * channels * elt,
                           .ld_q = qkv->c,
                           .ld_kv = qkv->c,
                           .causal = causal};
  return attention_run(ops, &a, error);
}
