/* Flash-style attention: for each (batch, head, block of query rows) walk the
 * key blocks, S = Q·Kᵀ on a tile, fold S into a running (online) softmax,
 * O += P·V. K and V are repacked once per call into the layouts the tile
 * products want (Kᵀ per key block, V zero-padded to whole blocks), in fp32.
 *
 * The tile products are fp32 brgemm ukernels of oneDNN when available, else
 * portable loops. The element-wise work is compiled for several x86 levels
 * (target_clones) so gcc's vectoriser uses AVX2/AVX-512 where present.
 */
#include "flash-attention.h"

#include "lcm.h"
#include "ops-internal.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#ifdef DNNL_EXPERIMENTAL_UKERNEL
#include <oneapi/dnnl/dnnl_ukernel.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTORISED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTORISED
#endif

/* ---- Element-wise kernels --------------------------------------------------- */

/* 2^t for t <= 0, relative error ~2e-7; written without calls (fmaf is an
 * instruction in the FMA clones) so that loops over it vectorise. */
static inline float exp2_nonpositive(float t) {
  const float round_shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  t = t < -125.0f ? -125.0f : t;         /* ~0 next to the row max's 1, yet no denormal */
  const float n = (t + round_shift) - round_shift;
  const float f = t - n; /* exact, in [-0.5, 0.5] */
  /* Taylor series of e^(f ln2), degree 6: error below 2e-7 on [-0.5, 0.5]. */
  float p = 1.5403530e-4f;
  p = fmaf(p, f, 1.3333558e-3f);
  p = fmaf(p, f, 9.6181291e-3f);
  p = fmaf(p, f, 5.5504109e-2f);
  p = fmaf(p, f, 2.4022651e-1f);
  p = fmaf(p, f, 6.9314718e-1f);
  p = fmaf(p, f, 1.0f);
  int32_t bits = ((int32_t)n + 127) * (1 << 23); /* 2^n */
  float two_n;
  memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

/* Reads `count` elements of dtype at src as fp32. */
VECTORISED static void load_f32(const void *src, dnnl_data_type_t dtype, int count, float *dst) {
  if (dtype == dnnl_bf16) {
    const uint16_t *s = src;
    for (int i = 0; i < count; i++) dst[i] = bf16_to_f32(s[i]);
  } else {
    memcpy(dst, src, (size_t)count * sizeof(float));
  }
}

/* Writes src * factor as `count` elements of dtype at dst. */
VECTORISED static void store_scaled(const float *src, float factor, int count,
                                    dnnl_data_type_t dtype, void *dst) {
  if (dtype == dnnl_bf16) {
    uint16_t *d = dst;
    for (int i = 0; i < count; i++) d[i] = f32_to_bf16(src[i] * factor);
  } else {
    float *d = dst;
    for (int i = 0; i < count; i++) d[i] = src[i] * factor;
  }
}

VECTORISED static void scale_row(float *row, float factor, int count) {
  for (int i = 0; i < count; i++) row[i] *= factor;
}

/* Folds one row of raw scores s[0, valid) into the running softmax with max
 * *m (of scaled scores, in base 2) and sum *l: s becomes e^(scale*s - max),
 * zero from `valid` to `width`. Returns the factor e^(old max - new max) the
 * row's output accumulator must be multiplied by. */
VECTORISED static float softmax_fold_row(float *restrict s, int valid, int width, float scale,
                                         float *m, float *l) {
  float row_max = -INFINITY;
#pragma omp simd reduction(max : row_max)
  for (int c = 0; c < valid; c++) row_max = s[c] > row_max ? s[c] : row_max;
  /* Work in base 2: e^(scale*s - m) = 2^(scale*log2(e)*s - m*log2(e)). */
  const float scale2 = scale * (float)M_LOG2E;
  const float m_new = MAX(*m, row_max * scale2);
  const float alpha = *m == -INFINITY ? 0.0f : exp2_nonpositive(*m - m_new);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < valid; c++) {
    const float p = exp2_nonpositive(fmaf(s[c], scale2, -m_new));
    s[c] = p;
    sum += p;
  }
  for (int c = valid; c < width; c++) s[c] = 0.0f;
  *l = *l * alpha + sum;
  *m = m_new;
  return alpha;
}

/* C (+)= A·B on row-major fp32 tiles. */
VECTORISED static void gemm_portable(int m, int n, int k, const float *a, int lda, const float *b,
                                     int ldb, float *c, int ldc, gboolean accumulate) {
  for (int i = 0; i < m; i++) {
    float *restrict ci = c + (size_t)i * ldc;
    if (!accumulate) memset(ci, 0, (size_t)n * sizeof(float));
    for (int p = 0; p < k; p++) {
      const float aip = a[(size_t)i * lda + p];
      const float *restrict bp = b + (size_t)p * ldb;
      for (int j = 0; j < n; j++) ci[j] += aip * bp[j];
    }
  }
}

/* ---- Tile products ------------------------------------------------------------ */

/* C[m,n] (+)= A[m,k]·B[k,n], fp32 row-major with leading dimensions. fp32
 * brgemms use no AMX tiles, so they need no per-thread hardware context. */
typedef struct {
  int m, n, k, lda, ldb, ldc;
  gboolean accumulate;
  gboolean portable_only; /* asked not to use the ukernel */
#ifdef DNNL_EXPERIMENTAL_UKERNEL
  dnnl_brgemm_t brgemm; /* NULL: portable loops */
#endif
  size_t scratch_size; /* bytes each thread passes to the brgemm */
} TileGemm;

static void tile_gemm_run(const TileGemm *g, const float *a, const float *b, float *c,
                          void *scratch) {
#ifdef DNNL_EXPERIMENTAL_UKERNEL
  if (g->brgemm) {
    static const dnnl_dim_t no_offsets[2] = {0, 0}; /* batch of one */
    if (dnnl_brgemm_execute(g->brgemm, a, b, no_offsets, c, scratch) == dnnl_success) return;
  }
#endif
  (void)scratch;
  gemm_portable(g->m, g->n, g->k, a, g->lda, b, g->ldb, c, g->ldc, g->accumulate);
}

#ifdef DNNL_EXPERIMENTAL_UKERNEL
/* A generated fp32 brgemm taking B as plain rows, or NULL where this CPU or
 * oneDNN has none (the caller then uses the portable loops). */
static dnnl_brgemm_t brgemm_new(const TileGemm *g) {
  dnnl_brgemm_t brgemm = NULL;
  dnnl_pack_type_t pack = dnnl_pack_type_undef;
  if (dnnl_brgemm_create(&brgemm, g->m, g->n, g->k, 1, g->lda, g->ldb, g->ldc, dnnl_f32, dnnl_f32,
                         dnnl_f32) != dnnl_success)
    return NULL;
  if (dnnl_brgemm_set_add_C(brgemm, g->accumulate) != dnnl_success ||
      dnnl_brgemm_finalize(brgemm) != dnnl_success ||
      dnnl_brgemm_get_B_pack_type(brgemm, &pack) != dnnl_success ||
      pack != dnnl_pack_type_no_trans || dnnl_brgemm_generate(brgemm) != dnnl_success) {
    dnnl_brgemm_destroy(brgemm);
    return NULL;
  }
  return brgemm;
}
#endif

/* Generated kernels live for the whole process: attention is called with the
 * same few shapes over and over. */
static GMutex tile_gemm_lock;
static GPtrArray *tile_gemm_cache;

static const TileGemm *tile_gemm_get(const TileGemm *shape) {
  g_mutex_lock(&tile_gemm_lock);
  if (!tile_gemm_cache) tile_gemm_cache = g_ptr_array_new();
  const TileGemm *found = NULL;
  for (guint i = 0; i < tile_gemm_cache->len && !found; i++) {
    const TileGemm *g = g_ptr_array_index(tile_gemm_cache, i);
    if (g->m == shape->m && g->n == shape->n && g->k == shape->k && g->lda == shape->lda &&
        g->ldb == shape->ldb && g->ldc == shape->ldc && g->accumulate == shape->accumulate &&
        g->portable_only == shape->portable_only)
      found = g;
  }
  if (!found) {
    TileGemm *g = g_new(TileGemm, 1);
    *g = *shape;
    g->scratch_size = 0;
#ifdef DNNL_EXPERIMENTAL_UKERNEL
    g->brgemm = g->portable_only ? NULL : brgemm_new(g);
    if (g->brgemm && dnnl_brgemm_get_scratchpad_size(g->brgemm, &g->scratch_size) != dnnl_success)
      g_clear_pointer(&g->brgemm, dnnl_brgemm_destroy);
#endif
    g_ptr_array_add(tile_gemm_cache, g);
    found = g;
  }
  g_mutex_unlock(&tile_gemm_lock);
  return found;
}

/* ---- The attention loop --------------------------------------------------------- */

typedef struct {
  const FlashAttentionArgs *args;
  int q_block, k_block; /* rows of Q and keys per tile */
  int q_blocks, k_blocks;
  float scale;
  float *k_packed;        /* [batch][heads][k_blocks][d][k_block]: Kᵀ of each key block */
  float *v_packed;        /* [batch][heads][k_blocks * k_block][d], zero rows past the end */
  const TileGemm *scores; /* S = Q_tile · Kᵀ_block */
  const TileGemm *values; /* O += P · V_block */
} Plan;

static size_t element_size(dnnl_data_type_t dtype) {
  return dtype == dnnl_bf16 ? 2 : 4;
}

/* Address of head h's first element in row `row` of a token-major tensor. */
static const void *head_row(const void *base, dnnl_data_type_t dtype, size_t stride, size_t row,
                            int h, int d) {
  return (const char *)base + (row * stride + (size_t)h * d) * element_size(dtype);
}

/* Packs key block kb of one (batch, head): Kᵀ and V, zero past kv_tokens. */
static void pack_key_block(const Plan *plan, int b, int h, int kb, float *row) {
  const FlashAttentionArgs *a = plan->args;
  const int d = a->head_dim, bk = plan->k_block;
  const size_t bh = (size_t)b * a->heads + h;
  float *kt = plan->k_packed + (bh * plan->k_blocks + kb) * d * bk;
  float *v = plan->v_packed + (bh * plan->k_blocks + kb) * bk * d;
  for (int j = 0; j < bk; j++) {
    const int t = kb * bk + j;
    if (t < a->kv_tokens) {
      const size_t src_row = (size_t)b * a->kv_tokens + t;
      load_f32(head_row(a->k, a->dtype, a->k_stride, src_row, h, d), a->dtype, d, row);
      for (int c = 0; c < d; c++) kt[(size_t)c * bk + j] = row[c];
      load_f32(head_row(a->v, a->dtype, a->v_stride, src_row, h, d), a->dtype, d, v + j * d);
    } else {
      for (int c = 0; c < d; c++) kt[(size_t)c * bk + j] = 0.0f;
      memset(v + j * d, 0, (size_t)d * sizeof(float));
    }
  }
}

typedef struct {
  float *q;     /* [q_block][d] */
  float *s;     /* [q_block][k_block]: scores, then probabilities */
  float *o;     /* [q_block][d] */
  float *m, *l; /* [q_block]: running max and sum */
  void *gemm_scratch;
} Scratch;

static size_t scratch_floats(const Plan *plan) {
  const size_t bq = plan->q_block, d = plan->args->head_dim;
  return bq * d * 2 + bq * plan->k_block + bq * 2;
}

static void scratch_init(Scratch *s, const Plan *plan, float *floats, void *gemm_scratch) {
  const size_t bq = plan->q_block, d = plan->args->head_dim;
  s->q = floats;
  s->o = s->q + bq * d;
  s->s = s->o + bq * d;
  s->m = s->s + bq * plan->k_block;
  s->l = s->m + bq;
  s->gemm_scratch = gemm_scratch;
}

/* Attention output for query rows [qb*q_block, +q_block) of one (batch, head). */
static void attend_query_block(const Plan *plan, int b, int h, int qb, Scratch *t) {
  const FlashAttentionArgs *a = plan->args;
  const int d = a->head_dim, bq = plan->q_block, bk = plan->k_block;
  const int q0 = qb * bq, rows = MIN(bq, a->q_tokens - q0);
  const size_t bh = (size_t)b * a->heads + h;

  for (int r = 0; r < rows; r++)
    load_f32(head_row(a->q, a->dtype, a->q_stride, (size_t)b * a->q_tokens + q0 + r, h, d),
             a->dtype, d, t->q + (size_t)r * d);
  /* Padding rows see zero scores and stay zero; they are never stored. */
  memset(t->q + (size_t)rows * d, 0, (size_t)(bq - rows) * d * sizeof(float));
  memset(t->o, 0, (size_t)bq * d * sizeof(float));
  for (int r = 0; r < bq; r++) {
    t->m[r] = -INFINITY;
    t->l[r] = 0.0f;
  }

  const int visible_keys = a->causal ? MIN(a->kv_tokens, q0 + rows) : a->kv_tokens;
  const int k_blocks = (visible_keys + bk - 1) / bk;
  for (int kb = 0; kb < k_blocks; kb++) {
    const int k0 = kb * bk;
    tile_gemm_run(plan->scores, t->q, plan->k_packed + (bh * plan->k_blocks + kb) * d * bk, t->s,
                  t->gemm_scratch);
    for (int r = 0; r < rows; r++) {
      float *s_row = t->s + (size_t)r * bk;
      int valid = MIN(bk, a->kv_tokens - k0);
      if (a->causal) valid = MIN(valid, q0 + r - k0 + 1);
      if (valid <= 0) {
        memset(s_row, 0, (size_t)bk * sizeof(float));
        continue;
      }
      const float alpha = softmax_fold_row(s_row, valid, bk, plan->scale, &t->m[r], &t->l[r]);
      if (alpha != 1.0f) scale_row(t->o + (size_t)r * d, alpha, d);
    }
    tile_gemm_run(plan->values, t->s, plan->v_packed + (bh * plan->k_blocks + kb) * bk * d, t->o,
                  t->gemm_scratch);
  }

  for (int r = 0; r < rows; r++) {
    const size_t out_row = (size_t)b * a->q_tokens + q0 + r;
    void *dst = (char *)a->out + (out_row * a->out_stride + (size_t)h * d) * element_size(a->dtype);
    store_scaled(t->o + (size_t)r * d, 1.0f / t->l[r], d, a->dtype, dst);
  }
}

static size_t round_up(size_t x, size_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

static gboolean check_args(const FlashAttentionArgs *a, GError **error) {
  const char *problem = NULL;
  if (!a || !a->q || !a->k || !a->v || !a->out)
    problem = "a tensor is missing";
  else if (a->dtype != dnnl_f32 && a->dtype != dnnl_bf16)
    problem = "the dtype must be f32 or bf16";
  else if (a->batch <= 0 || a->heads <= 0 || a->head_dim <= 0 || a->q_tokens <= 0 ||
           a->kv_tokens <= 0)
    problem = "batch, heads, head_dim and token counts must be positive";
  else {
    const size_t width = (size_t)a->heads * a->head_dim;
    if (a->q_stride < width || a->k_stride < width || a->v_stride < width || a->out_stride < width)
      problem = "a row stride is smaller than heads * head_dim";
  }
  if (problem) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "flash attention: %s", problem);
    return FALSE;
  }
  return TRUE;
}

gboolean flash_attention(const FlashAttentionArgs *args, GError **error) {
  if (!check_args(args, error)) return FALSE;
  const int d = args->head_dim;
  /* Tile sizes measured best on AVX2 (Zen 3, 512 KB L2): narrow heads take
   * long key blocks, wide heads (the VAE's 512) more query rows to reuse
   * each K/V block from L3. Short sequences get tiles no longer than
   * themselves. */
  const size_t q_block = d <= 256 ? 64 : 128, k_block = d <= 256 ? 256 : 64;
  Plan plan = {
      .args = args,
      .q_block = (int)MIN(q_block, round_up((size_t)args->q_tokens, 8)),
      .k_block = (int)MIN(k_block, round_up((size_t)args->kv_tokens, 16)),
      .scale = 1.0f / sqrtf((float)d),
  };
  plan.q_blocks = (args->q_tokens + plan.q_block - 1) / plan.q_block;
  plan.k_blocks = (args->kv_tokens + plan.k_block - 1) / plan.k_block;
  const int bq = plan.q_block, bk = plan.k_block;
  plan.scores = tile_gemm_get(&(TileGemm){.m = bq,
                                          .n = bk,
                                          .k = d,
                                          .lda = d,
                                          .ldb = bk,
                                          .ldc = bk,
                                          .portable_only = args->portable_only});
  plan.values = tile_gemm_get(&(TileGemm){.m = bq,
                                          .n = d,
                                          .k = bk,
                                          .lda = bk,
                                          .ldb = d,
                                          .ldc = d,
                                          .accumulate = TRUE,
                                          .portable_only = args->portable_only});

  const int threads = omp_get_max_threads();
  const size_t heads_total = (size_t)args->batch * args->heads;
  const size_t packed_floats = heads_total * plan.k_blocks * bk * d;
  const size_t gemm_scratch =
      round_up(MAX(plan.scores->scratch_size, plan.values->scratch_size), 64);
  const size_t thread_bytes = round_up(scratch_floats(&plan) * sizeof(float), 64) + gemm_scratch;
  plan.k_packed = aligned_buffer(packed_floats * sizeof(float));
  plan.v_packed = aligned_buffer(packed_floats * sizeof(float));
  char *scratch = aligned_buffer(thread_bytes * threads);
  if (!plan.k_packed || !plan.v_packed || !scratch) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_BACKEND,
                "flash attention: out of memory for %d tokens x %d heads x %d", args->kv_tokens,
                args->heads, d);
    free(plan.k_packed);
    free(plan.v_packed);
    free(scratch);
    return FALSE;
  }

#pragma omp parallel num_threads(threads)
  {
    char *mine = scratch + thread_bytes * omp_get_thread_num();
    Scratch t;
    scratch_init(&t, &plan, (float *)(mine + gemm_scratch), mine);

#pragma omp for schedule(static)
    for (size_t i = 0; i < heads_total * plan.k_blocks; i++)
      pack_key_block(&plan, (int)(i / plan.k_blocks / args->heads),
                     (int)(i / plan.k_blocks % args->heads), (int)(i % plan.k_blocks), t.q);

#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < heads_total * plan.q_blocks; i++)
      attend_query_block(&plan, (int)(i / plan.q_blocks / args->heads),
                         (int)(i / plan.q_blocks % args->heads), (int)(i % plan.q_blocks), &t);
  }

  free(plan.k_packed);
  free(plan.v_packed);
  free(scratch);
  return TRUE;
}
