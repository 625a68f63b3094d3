/* Flash-style attention: for each (batch, head, block of query rows) walk the
 * key blocks, S = Q·Kᵀ on a tile, fold S into a running (online) softmax,
 * O += P·V. K and V are repacked once per call into the layouts the tile
 * products want: Kᵀ per key block and V zero-padded to whole blocks, as
 * fp32 rows for fp32 tiles, in oneDNN's pack32 layout for bf16 tiles.
 *
 * bf16 tiles (oneDNN's bf16 brgemm, where the CPU has bf16 dot products)
 * take Q, K and V as they are and P rounded to bf16; fp32 tiles (oneDNN's
 * fp32 brgemm, else portable loops) widen bf16 inputs. The element-wise
 * work is compiled for several x86 levels (target_clones) so gcc's
 * vectoriser uses AVX2/AVX-512 where present.
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

/* 2^t for t <= 0, written without calls (fmaf is an instruction in the FMA
 * clones) so that loops over it vectorise. precise (a constant where it is
 * inlined): relative error ~2e-7, for fp32 probabilities; else ~4e-5, 2% of
 * half a bf16 step, for probabilities rounded to bf16. */
static inline float exp2_nonpositive(float t, gboolean precise) {
  const float round_shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  t = t < -125.0f ? -125.0f : t;         /* ~0 next to the row max's 1, yet no denormal */
  const float shifted = t + round_shift;
  const float f = t - (shifted - round_shift); /* exact, in [-0.5, 0.5] */
  /* Taylor series of e^(f ln2), degree 6 or 4. */
  float p = 9.6181291e-3f;
  if (precise) p = fmaf(fmaf(1.5403530e-4f, f, 1.3333558e-3f), f, 9.6181291e-3f);
  p = fmaf(p, f, 5.5504109e-2f);
  p = fmaf(p, f, 2.4022651e-1f);
  p = fmaf(p, f, 6.9314718e-1f);
  p = fmaf(p, f, 1.0f);
  /* 2^n from the integer n in shifted's low mantissa bits: the shift by 23
   * keeps n + 127, whatever the bits above. */
  uint32_t bits;
  memcpy(&bits, &shifted, sizeof bits);
  bits = (bits + 127u) << 23;
  float two_n;
  memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

/* A probability (in [0, 1], or NaN) rounded to bf16, nearest even: cheaper
 * than f32_to_bf16, as no sign or infinity can occur; every NaN becomes the
 * quiet NaN first, so that rounding never carries it into another value. */
static inline uint16_t probability_to_bf16(float p) {
  uint32_t bits;
  memcpy(&bits, &p, sizeof bits);
  bits = bits < 0x7fc00000u ? bits : 0x7fc00000u;
  return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
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
 * *m (of scaled scores, in base 2) and sum *l: the probabilities
 * e^(scale*s - max) go to s, or rounded to bf16 to p16 when given (and the
 * sum is that of the rounded values the product will use); both are zero
 * from `valid` to `width`. Returns the factor e^(old max - new max) the
 * row's output accumulator must be multiplied by. */
VECTORISED static float softmax_fold_row(float *restrict s, uint16_t *restrict p16, int valid,
                                         int width, float scale, float *m, float *l) {
  float row_max = -INFINITY;
#pragma omp simd reduction(max : row_max)
  for (int c = 0; c < valid; c++) row_max = s[c] > row_max ? s[c] : row_max;
  /* Work in base 2: e^(scale*s - m) = 2^(scale*log2(e)*s - m*log2(e)). */
  const float scale2 = scale * (float)M_LOG2E;
  const float m_new = MAX(*m, row_max * scale2);
  const float alpha = *m == -INFINITY ? 0.0f : exp2_nonpositive(*m - m_new, TRUE);
  float sum = 0.0f;
  if (p16) {
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < valid; c++) {
      const uint16_t p = probability_to_bf16(exp2_nonpositive(fmaf(s[c], scale2, -m_new), FALSE));
      p16[c] = p;
      sum += bf16_to_f32(p);
    }
    for (int c = valid; c < width; c++) p16[c] = 0;
  } else {
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < valid; c++) {
      const float p = exp2_nonpositive(fmaf(s[c], scale2, -m_new), TRUE);
      s[c] = p;
      sum += p;
    }
    for (int c = valid; c < width; c++) s[c] = 0.0f;
  }
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

/* C[m,n] (+)= A[m,k]·B[k,n] with fp32 C. In fp32, A and B are row-major
 * with leading dimensions. In bf16 (oneDNN's bf16 brgemm), A is row-major
 * and B in oneDNN's pack32 layout (pack32_offset): the kernel handles at
 * most 64 columns, so the tile is run as 64-column blocks and a tail. */
typedef struct {
  int m, n, k, lda, ldb, ldc;
  dnnl_data_type_t dtype; /* of A and B */
  gboolean accumulate;
  gboolean portable_only; /* fp32: asked not to use the ukernel */
#ifdef DNNL_EXPERIMENTAL_UKERNEL
  dnnl_brgemm_t brgemm;      /* fp32: the whole tile; bf16: one 64-column block */
  dnnl_brgemm_t brgemm_tail; /* bf16: the last n % 64 columns */
#endif
  gboolean on_ukernel; /* every kernel the tile needs was generated */
  size_t scratch_size; /* bytes each thread passes to the brgemm */
} TileGemm;

#define PACK32_BLOCK 64

/* Offset of B[k][n] in oneDNN's pack32 layout of a bf16 B with `rows` (even)
 * rows and n_total columns: blocks of 64 columns (the last one as wide as
 * what is left, rounded up to 16), each holding pairs of rows interleaved
 * column by column, as the bf16 dot product instructions read them. */
static size_t pack32_offset(int k, int n, int rows, int n_total) {
  const int block = n / PACK32_BLOCK, full_blocks = n_total / PACK32_BLOCK;
  const int ldb = block < full_blocks ? PACK32_BLOCK : (n_total % PACK32_BLOCK + 15) / 16 * 16;
  return (size_t)block * PACK32_BLOCK * rows + ((size_t)(k / 2) * ldb + n % PACK32_BLOCK) * 2 +
         k % 2;
}

/* Elements of a packed bf16 B of `rows` x n_total. */
static size_t pack32_size(int rows, int n_total) {
  return (size_t)rows * ((n_total + 15) / 16 * 16);
}

/* Per-thread state of the tile products: AMX tiles must be configured for
 * the kernel about to run (a no-op on other ISAs). */
typedef struct {
  void *scratch;
  const void *configured; /* the kernel the hardware context was last set for */
} TileContext;

#ifdef DNNL_EXPERIMENTAL_UKERNEL
static void brgemm_run(dnnl_brgemm_t brgemm, const void *a, const void *b, void *c,
                       TileContext *t) {
  static const dnnl_dim_t no_offsets[2] = {0, 0}; /* batch of one */
  if (t->configured != brgemm) {
    dnnl_brgemm_set_hw_context(brgemm);
    t->configured = brgemm;
  }
  dnnl_brgemm_execute(brgemm, a, b, no_offsets, c, t->scratch);
}
#endif

static void tile_gemm_run(const TileGemm *g, const void *a, const void *b, float *c,
                          TileContext *t) {
#ifdef DNNL_EXPERIMENTAL_UKERNEL
  if (g->on_ukernel && g->dtype == dnnl_bf16) {
    const uint16_t *b16 = b;
    int n0 = 0;
    for (; n0 + PACK32_BLOCK <= g->n; n0 += PACK32_BLOCK)
      brgemm_run(g->brgemm, a, b16 + pack32_offset(0, n0, g->k, g->n), c + n0, t);
    if (n0 < g->n) brgemm_run(g->brgemm_tail, a, b16 + pack32_offset(0, n0, g->k, g->n), c + n0, t);
    return;
  }
  if (g->on_ukernel) {
    brgemm_run(g->brgemm, a, b, c, t);
    return;
  }
#endif
  (void)t;
  gemm_portable(g->m, g->n, g->k, a, g->lda, b, g->ldb, c, g->ldc, g->accumulate);
}

#ifdef DNNL_EXPERIMENTAL_UKERNEL
/* A generated brgemm of n columns taking B as `pack` wants, or NULL where
 * this CPU or oneDNN has none. */
static dnnl_brgemm_t brgemm_new(const TileGemm *g, int n, int ldb, dnnl_pack_type_t pack) {
  dnnl_brgemm_t brgemm = NULL;
  dnnl_pack_type_t wanted = dnnl_pack_type_undef;
  if (dnnl_brgemm_create(&brgemm, g->m, n, g->k, 1, g->lda, ldb, g->ldc, g->dtype, g->dtype,
                         dnnl_f32) != dnnl_success)
    return NULL;
  if (dnnl_brgemm_set_add_C(brgemm, g->accumulate) != dnnl_success ||
      dnnl_brgemm_finalize(brgemm) != dnnl_success ||
      dnnl_brgemm_get_B_pack_type(brgemm, &wanted) != dnnl_success || wanted != pack ||
      dnnl_brgemm_generate(brgemm) != dnnl_success) {
    dnnl_brgemm_destroy(brgemm);
    return NULL;
  }
  return brgemm;
}

static size_t brgemm_scratch_size(dnnl_brgemm_t brgemm) {
  size_t size = 0;
  if (brgemm) dnnl_brgemm_get_scratchpad_size(brgemm, &size);
  return size;
}

/* bf16 brgemms only where the CPU has bf16 dot products (AVX512-BF16, AMX,
 * AVX2-VNNI-2); elsewhere oneDNN would emulate them, slower than fp32. */
static gboolean cpu_has_bf16_dot_products(void) {
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16 ||
         (isa & dnnl_cpu_isa_avx2_vnni_2) == dnnl_cpu_isa_avx2_vnni_2;
}

static void tile_gemm_generate(TileGemm *g) {
  if (g->portable_only) return;
  if (g->dtype == dnnl_f32) {
    g->brgemm = brgemm_new(g, g->n, g->ldb, dnnl_pack_type_no_trans);
    g->on_ukernel = g->brgemm != NULL;
  } else if (cpu_has_bf16_dot_products()) {
    const int tail = g->n % PACK32_BLOCK, tail_ldb = (tail + 15) / 16 * 16;
    if (g->n >= PACK32_BLOCK)
      g->brgemm = brgemm_new(g, PACK32_BLOCK, PACK32_BLOCK, dnnl_pack_type_pack32);
    if (tail) g->brgemm_tail = brgemm_new(g, tail, tail_ldb, dnnl_pack_type_pack32);
    g->on_ukernel = (g->n < PACK32_BLOCK || g->brgemm) && (!tail || g->brgemm_tail);
  }
  g->scratch_size = MAX(brgemm_scratch_size(g->brgemm), brgemm_scratch_size(g->brgemm_tail));
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
        g->ldb == shape->ldb && g->ldc == shape->ldc && g->dtype == shape->dtype &&
        g->accumulate == shape->accumulate && g->portable_only == shape->portable_only)
      found = g;
  }
  if (!found) {
    TileGemm *g = g_new0(TileGemm, 1);
    *g = *shape;
#ifdef DNNL_EXPERIMENTAL_UKERNEL
    tile_gemm_generate(g);
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
  dnnl_data_type_t tiles; /* dtype of the tile operands: bf16 on the bf16 ukernel, else f32 */
  int q_block, k_block;   /* rows of Q and keys per tile */
  int q_blocks, k_blocks;
  int depth; /* head_dim, rounded up to whole pairs of rows for bf16 */
  float scale;
  size_t block_elements;  /* of one packed key block, K or V */
  void *k_packed;         /* [batch][heads][k_blocks]: Kᵀ of each key block */
  void *v_packed;         /* [batch][heads][k_blocks]: V, zero rows past the end */
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

/* Packs key block kb of one (batch, head): Kᵀ and V, zero past kv_tokens
 * (and past head_dim in bf16). `row` holds head_dim floats. fp32 tiles take
 * both as plain rows, bf16 tiles in the pack32 layout. */
static void pack_key_block(const Plan *plan, int b, int h, int kb, float *row) {
  const FlashAttentionArgs *a = plan->args;
  const int d = a->head_dim, bk = plan->k_block;
  const size_t block = ((size_t)b * a->heads + h) * plan->k_blocks + kb;
  const size_t offset = block * plan->block_elements * element_size(plan->tiles);
  void *kt = (char *)plan->k_packed + offset, *v = (char *)plan->v_packed + offset;
  memset(kt, 0, plan->block_elements * element_size(plan->tiles));
  memset(v, 0, plan->block_elements * element_size(plan->tiles));
  for (int j = 0; j < MIN(bk, a->kv_tokens - kb * bk); j++) {
    const size_t src_row = (size_t)b * a->kv_tokens + kb * bk + j;
    const void *k_src = head_row(a->k, a->dtype, a->k_stride, src_row, h, d);
    const void *v_src = head_row(a->v, a->dtype, a->v_stride, src_row, h, d);
    if (plan->tiles == dnnl_bf16) {
      const uint16_t *k16 = k_src, *v16 = v_src;
      for (int c = 0; c < d; c++) {
        ((uint16_t *)kt)[pack32_offset(c, j, plan->depth, bk)] = k16[c];
        ((uint16_t *)v)[pack32_offset(j, c, bk, d)] = v16[c];
      }
    } else {
      load_f32(k_src, a->dtype, d, row);
      for (int c = 0; c < d; c++) ((float *)kt)[(size_t)c * bk + j] = row[c];
      load_f32(v_src, a->dtype, d, (float *)v + (size_t)j * d);
    }
  }
}

typedef struct {
  void *q;      /* [q_block][depth] in the tiles' dtype */
  float *s;     /* [q_block][k_block]: scores, then fp32 probabilities */
  uint16_t *p;  /* [q_block][k_block]: bf16 probabilities for bf16 tiles */
  float *o;     /* [q_block][d] */
  float *m, *l; /* [q_block]: running max and sum */
  TileContext tile;
} Scratch;

static size_t scratch_floats(const Plan *plan) {
  const size_t bq = plan->q_block, bk = plan->k_block;
  return bq * plan->depth + bq * plan->args->head_dim + bq * bk * 3 / 2 + bq * 2;
}

static void scratch_init(Scratch *s, const Plan *plan, float *floats, void *gemm_scratch) {
  const size_t bq = plan->q_block, bk = plan->k_block;
  s->o = floats;
  s->s = s->o + bq * plan->args->head_dim;
  s->m = s->s + bq * bk;
  s->l = s->m + bq;
  s->q = s->l + bq;
  s->p = (uint16_t *)((float *)s->q + bq * plan->depth);
  s->tile = (TileContext){.scratch = gemm_scratch};
}

/* Attention output for query rows [qb*q_block, +q_block) of one (batch, head). */
static void attend_query_block(const Plan *plan, int b, int h, int qb, Scratch *t) {
  const FlashAttentionArgs *a = plan->args;
  const int d = a->head_dim, bq = plan->q_block, bk = plan->k_block;
  const int q0 = qb * bq, rows = MIN(bq, a->q_tokens - q0);
  const size_t bh = (size_t)b * a->heads + h, tile_size = element_size(plan->tiles);
  const gboolean bf16_tiles = plan->tiles == dnnl_bf16;

  /* Padding rows and columns are zero: padding rows see zero scores and
   * stay zero; they are never stored. */
  memset(t->q, 0, (size_t)bq * plan->depth * tile_size);
  for (int r = 0; r < rows; r++) {
    const void *src = head_row(a->q, a->dtype, a->q_stride, (size_t)b * a->q_tokens + q0 + r, h, d);
    void *dst = (char *)t->q + (size_t)r * plan->depth * tile_size;
    if (bf16_tiles)
      memcpy(dst, src, (size_t)d * tile_size);
    else
      load_f32(src, a->dtype, d, dst);
  }
  if (bf16_tiles) memset(t->p, 0, (size_t)bq * bk * sizeof *t->p);
  memset(t->o, 0, (size_t)bq * d * sizeof(float));
  for (int r = 0; r < bq; r++) {
    t->m[r] = -INFINITY;
    t->l[r] = 0.0f;
  }

  const int visible_keys = a->causal ? MIN(a->kv_tokens, q0 + rows) : a->kv_tokens;
  const int k_blocks = (visible_keys + bk - 1) / bk;
  for (int kb = 0; kb < k_blocks; kb++) {
    const int k0 = kb * bk;
    const size_t packed = (bh * plan->k_blocks + kb) * plan->block_elements * tile_size;
    tile_gemm_run(plan->scores, t->q, (char *)plan->k_packed + packed, t->s, &t->tile);
    for (int r = 0; r < rows; r++) {
      float *s_row = t->s + (size_t)r * bk;
      uint16_t *p_row = bf16_tiles ? t->p + (size_t)r * bk : NULL;
      int valid = MIN(bk, a->kv_tokens - k0);
      if (a->causal) valid = MIN(valid, q0 + r - k0 + 1);
      if (valid <= 0) {
        memset(s_row, 0, (size_t)bk * sizeof(float));
        if (p_row) memset(p_row, 0, (size_t)bk * sizeof *p_row);
        continue;
      }
      const float alpha =
          softmax_fold_row(s_row, p_row, valid, bk, plan->scale, &t->m[r], &t->l[r]);
      if (alpha != 1.0f) scale_row(t->o + (size_t)r * d, alpha, d);
    }
    tile_gemm_run(plan->values, bf16_tiles ? (void *)t->p : t->s, (char *)plan->v_packed + packed,
                  t->o, &t->tile);
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
  else if (a->max_tiles < FLASH_TILES_AUTO || a->max_tiles > FLASH_TILES_BF16)
    problem = "unknown tile kind";
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

/* The two tile products for operands of `tiles` dtype. */
static void plan_tiles(Plan *plan, dnnl_data_type_t tiles) {
  const FlashAttentionArgs *args = plan->args;
  const int d = args->head_dim, bq = plan->q_block, bk = plan->k_block;
  const gboolean portable_only = args->max_tiles == FLASH_TILES_PORTABLE;
  plan->tiles = tiles;
  plan->depth = tiles == dnnl_bf16 ? (int)round_up((size_t)d, 2) : d;
  plan->block_elements =
      tiles == dnnl_bf16 ? MAX(pack32_size(plan->depth, bk), pack32_size(bk, d)) : (size_t)bk * d;
  plan->scores = tile_gemm_get(&(TileGemm){.m = bq,
                                           .n = bk,
                                           .k = plan->depth,
                                           .lda = plan->depth,
                                           .ldb = bk,
                                           .ldc = bk,
                                           .dtype = tiles,
                                           .portable_only = portable_only});
  plan->values = tile_gemm_get(&(TileGemm){.m = bq,
                                           .n = d,
                                           .k = bk,
                                           .lda = bk,
                                           .ldb = d,
                                           .ldc = d,
                                           .dtype = tiles,
                                           .accumulate = TRUE,
                                           .portable_only = portable_only});
}

static void plan_init(Plan *plan, const FlashAttentionArgs *args) {
  const int d = args->head_dim;
  /* Tile sizes measured best on AVX2 (Zen 3, 512 KB L2): narrow heads take
   * long key blocks, wide heads (the VAE's 512) more query rows to reuse
   * each K/V block from L3. Short sequences get tiles no longer than
   * themselves. */
  const size_t q_block = d <= 256 ? 64 : 128, k_block = d <= 256 ? 256 : 64;
  *plan = (Plan){
      .args = args,
      .q_block = (int)MIN(q_block, round_up((size_t)args->q_tokens, 8)),
      .k_block = (int)MIN(k_block, round_up((size_t)args->kv_tokens, 16)),
      .scale = 1.0f / sqrtf((float)d),
  };
  plan->q_blocks = (args->q_tokens + plan->q_block - 1) / plan->q_block;
  plan->k_blocks = (args->kv_tokens + plan->k_block - 1) / plan->k_block;
  /* bf16 inputs take the bf16 ukernel when this CPU has one; everything
   * else runs in fp32 tiles. */
  if (args->dtype == dnnl_bf16 &&
      (args->max_tiles == FLASH_TILES_AUTO || args->max_tiles == FLASH_TILES_BF16)) {
    plan_tiles(plan, dnnl_bf16);
    if (plan->scores->on_ukernel && plan->values->on_ukernel) return;
  }
  plan_tiles(plan, dnnl_f32);
}

static FlashTiles plan_kind(const Plan *plan) {
  if (!plan->scores->on_ukernel || !plan->values->on_ukernel) return FLASH_TILES_PORTABLE;
  return plan->tiles == dnnl_bf16 ? FLASH_TILES_BF16 : FLASH_TILES_F32;
}

FlashTiles flash_attention_tiles(const FlashAttentionArgs *args, GError **error) {
  if (!check_args(args, error)) return FLASH_TILES_AUTO;
  Plan plan;
  plan_init(&plan, args);
  return plan_kind(&plan);
}

gboolean flash_attention(const FlashAttentionArgs *args, GError **error) {
  if (!check_args(args, error)) return FALSE;
  Plan plan;
  plan_init(&plan, args);
  const int threads = omp_get_max_threads();
  const size_t heads_total = (size_t)args->batch * args->heads;
  const size_t packed_bytes =
      heads_total * plan.k_blocks * plan.block_elements * element_size(plan.tiles);
  const size_t gemm_scratch =
      round_up(MAX(plan.scores->scratch_size, plan.values->scratch_size), 64);
  const size_t thread_bytes = round_up(scratch_floats(&plan) * sizeof(float), 64) + gemm_scratch;
  plan.k_packed = aligned_buffer(packed_bytes);
  plan.v_packed = aligned_buffer(packed_bytes);
  char *scratch = aligned_buffer(thread_bytes * threads);
  if (!plan.k_packed || !plan.v_packed || !scratch) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_BACKEND,
                "flash attention: out of memory for %d tokens x %d heads x %d", args->kv_tokens,
                args->heads, args->head_dim);
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
                     (int)(i / plan.k_blocks % args->heads), (int)(i % plan.k_blocks), t.o);

#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < heads_total * plan.q_blocks; i++)
      attend_query_block(&plan, (int)(i / plan.q_blocks / args->heads),
                         (int)(i / plan.q_blocks % args->heads), (int)(i % plan.q_blocks), &t);
#ifdef DNNL_EXPERIMENTAL_UKERNEL
    /* Gives AMX tiles back; nothing to do elsewhere. */
    if (t.tile.configured) dnnl_brgemm_release_hw_context();
#endif
  }

  free(plan.k_packed);
  free(plan.v_packed);
  free(scratch);
  return TRUE;
}
