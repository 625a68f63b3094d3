/* Times flash_attention on the attention shapes of SD1.5 at 512x512 and
 * 256x256.
 *
 * Usage: attention-bench [f32|bf16|both] [runs]
 * Prints, per shape, the minimum over `runs` timed calls (after one warm-up)
 * in ms and effective GFLOP/s (4·tq·tk·d·heads flops), for the default
 * flash path (its tile kind named), in bf16 also the flash kernel on fp32
 * tiles (inputs widened, as on CPUs without bf16 dot products), the
 * portable (no oneDNN ukernel) path, and ops.h's attention() (which picks
 * flash or a chain of oneDNN primitives over query blocks) with the chain
 * forced, where the CPU runs that dtype. The machine's load average is
 * printed too: on a shared machine, numbers mean little when it is high. */
#include "flash-attention.h"
#include "ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  int q_tokens, kv_tokens, heads, head_dim;
} BenchShape;

static const BenchShape shapes[] = {
    {"unet 64x64 self", 4096, 4096, 8, 40}, {"unet 64x64 cross", 4096, 77, 8, 40},
    {"unet 32x32 self", 1024, 1024, 8, 80}, {"unet 16x16 self", 256, 256, 8, 160},
    {"unet 16x16 cross", 256, 77, 8, 160},  {"vae mid", 4096, 4096, 1, 512},
    {"unet 32x32 cross", 1024, 77, 8, 80},  {"unet 8x8 self", 64, 64, 8, 160},
};

static const char *tiles_name(FlashTiles tiles) {
  switch (tiles) {
  case FLASH_TILES_BF16:
    return "bf16 tiles";
  case FLASH_TILES_F32:
    return "f32 tiles";
  case FLASH_TILES_PORTABLE:
    return "portable";
  default:
    return "?";
  }
}

static void print_load(const char *when) {
  char *text = NULL;
  if (g_file_get_contents("/proc/loadavg", &text, NULL, NULL))
    printf("load average %s: %s", when, text);
  g_free(text);
}

typedef gboolean (*Candidate)(const FlashAttentionArgs *args, Ops *ops, GError **error);

static gboolean run_flash(const FlashAttentionArgs *args, Ops *ops, GError **error) {
  (void)ops;
  return flash_attention(args, error);
}

/* The same attention through ops.h's primitive chain (forced by a chunk
 * size) on tensors viewing the same buffers. */
static gboolean run_primitive_chain(const FlashAttentionArgs *args, Ops *ops, GError **error) {
  const int width = args->heads * args->head_dim;
  Tensor q = {1, 1, args->q_tokens, width, args->dtype, (void *)args->q};
  Tensor k = {1, 1, args->kv_tokens, width, args->dtype, (void *)args->k};
  Tensor v = {1, 1, args->kv_tokens, width, args->dtype, (void *)args->v};
  Tensor *out = attention(ops, &q, &k, &v, args->heads, args->causal, error);
  tensor_free(out);
  return out != NULL;
}

/* Minimum wall time in ms of `runs` calls after a warm-up (kernels,
 * caches), or a negative value on error. */
static double time_call(Candidate candidate, const FlashAttentionArgs *args, Ops *ops, int runs) {
  GError *error = NULL;
  if (!candidate(args, ops, &error)) {
    fprintf(stderr, "attention failed: %s\n", error->message);
    g_error_free(error);
    return -1.0;
  }
  double best = G_MAXDOUBLE;
  for (int r = 0; r < runs; r++) {
    const gint64 start = g_get_monotonic_time();
    candidate(args, ops, NULL);
    best = MIN(best, (g_get_monotonic_time() - start) / 1000.0);
  }
  return best;
}

static void print_time(const char *label, double ms, double flops) {
  if (ms < 0)
    printf("   %s failed", label);
  else
    printf("   %s %8.2f ms %6.1f GFLOP/s", label, ms, flops / ms / 1e6);
}

/* ops may be NULL when the CPU cannot compute in this dtype. */
static void bench_shape(const BenchShape *s, dnnl_data_type_t dtype, Ops *ops, int runs) {
  const size_t width = (size_t)s->heads * s->head_dim, esize = dtype == dnnl_f32 ? 4 : 2;
  const size_t q_bytes = s->q_tokens * width * esize, kv_bytes = s->kv_tokens * width * esize;
  char *q = g_malloc(q_bytes), *k = g_malloc(kv_bytes), *v = g_malloc(kv_bytes);
  void *out = g_malloc(q_bytes);
  GRand *rand = g_rand_new_with_seed(7);
  /* Random bf16 bit patterns of small normal numbers work for both dtypes:
   * as f32 they are the same values with zero low bits. */
  char *buffers[] = {q, k, v};
  const size_t sizes[] = {q_bytes, kv_bytes, kv_bytes};
  for (int b = 0; b < 3; b++)
    for (size_t i = 0; i < sizes[b] / 2; i++) {
      uint16_t bits = (uint16_t)(0x3c00 + g_rand_int_range(rand, 0, 0x0400)) |
                      (uint16_t)(g_rand_boolean(rand) ? 0x8000 : 0);
      if (dtype == dnnl_f32 && i % 2 == 0) bits = 0;
      memcpy(buffers[b] + 2 * i, &bits, 2);
    }
  FlashAttentionArgs args = {
      .batch = 1,
      .heads = s->heads,
      .head_dim = s->head_dim,
      .q_tokens = s->q_tokens,
      .kv_tokens = s->kv_tokens,
      .dtype = dtype,
      .q = q,
      .k = k,
      .v = v,
      .out = out,
      .q_stride = width,
      .k_stride = width,
      .v_stride = width,
      .out_stride = width,
  };
  const double flops = 4.0 * s->q_tokens * s->kv_tokens * s->head_dim * s->heads;
  printf("%-16s %-4s %4dx%-4d %dx%-3d", s->name, dtype == dnnl_f32 ? "f32" : "bf16", s->q_tokens,
         s->kv_tokens, s->heads, s->head_dim);
  print_time(tiles_name(flash_attention_tiles(&args, NULL)),
             time_call(run_flash, &args, NULL, runs), flops);
  if (dtype == dnnl_bf16) {
    args.max_tiles = FLASH_TILES_F32;
    print_time("f32 tiles", time_call(run_flash, &args, NULL, runs), flops);
  }
  if (ops) print_time("oneDNN chain", time_call(run_primitive_chain, &args, ops, runs), flops);
  args.max_tiles = FLASH_TILES_PORTABLE;
  print_time("portable", time_call(run_flash, &args, NULL, runs), flops);
  printf("\n");
  fflush(stdout);
  g_rand_free(rand);
  g_free(q);
  g_free(k);
  g_free(v);
  g_free(out);
}

int main(int argc, char **argv) {
  const char *which = argc > 1 ? argv[1] : "both";
  const int runs = argc > 2 ? MAX(1, atoi(argv[2])) : 5;
  Ops *ops_f32 = ops_new(LCM_PRECISION_FP32, NULL);
  Ops *ops_bf16 = ops_new(LCM_PRECISION_BF16, NULL); /* NULL where the CPU has no bf16 */
  /* A chunk size forces the primitive chain; 512 rows is its own default. */
  if (ops_f32) ops_set_attention_chunk(ops_f32, 512);
  if (ops_bf16) ops_set_attention_chunk(ops_bf16, 512);
  print_load("before");
  for (size_t i = 0; i < G_N_ELEMENTS(shapes); i++) {
    if (strcmp(which, "bf16") != 0) bench_shape(&shapes[i], dnnl_f32, ops_f32, runs);
    if (strcmp(which, "f32") != 0) bench_shape(&shapes[i], dnnl_bf16, ops_bf16, runs);
  }
  print_load("after");
  if (ops_f32) ops_free(ops_f32);
  if (ops_bf16) ops_free(ops_bf16);
  return 0;
}
