/* The convolution peak the benchmark measures each stage against. */
#include "lcm.h"
#include "ops.h"

#define PEAK_CHANNELS 320
#define PEAK_SIDE 64
#define PEAK_KERNEL 3
#define PEAK_WARMUP_RUNS 2
/* Runs at least this many times and for at least this long; keeps the best. */
#define PEAK_MIN_RUNS 5
#define PEAK_MIN_SECONDS 0.5

/* Random values of the scale a trained layer sees (AMX runs measurably
 * faster on zeros, so zero-filled data would overstate the peak). */
static float *random_values(LcmRng *rng, int64_t n, float scale) {
  float *values = g_new(float, n);
  lcm_rng_randn(rng, values, n);
  for (int64_t i = 0; i < n; i++) values[i] *= scale;
  return values;
}

double lcm_benchmark_conv_peak(LcmPrecision precision, GError **error) {
  const int64_t weight_count = (int64_t)PEAK_CHANNELS * PEAK_CHANNELS * PEAK_KERNEL * PEAK_KERNEL;
  const int64_t input_count = (int64_t)PEAK_CHANNELS * PEAK_SIDE * PEAK_SIDE;
  const double flops = 2.0 * (double)weight_count * PEAK_SIDE * PEAK_SIDE;

  LcmRng *rng = lcm_rng_new(0);
  float *weight = random_values(rng, weight_count, 1.0f / (PEAK_CHANNELS * PEAK_KERNEL));
  float *bias = random_values(rng, PEAK_CHANNELS, 0.1f);
  float *input = random_values(rng, input_count, 1.0f);
  lcm_rng_free(rng);

  double best_seconds = 0;
  Ops *ops = ops_new(precision, error);
  Conv2d *conv =
      ops ? conv2d_new(ops, weight, bias, PEAK_CHANNELS, PEAK_CHANNELS, PEAK_KERNEL, 1, error)
          : NULL;
  Tensor *x = conv ? tensor_from_nchw(ops, input, 1, PEAK_CHANNELS, PEAK_SIDE, PEAK_SIDE) : NULL;
  if (conv && !x)
    g_set_error(error, LCM_ERROR, LCM_ERROR_BACKEND,
                "conv peak: cannot allocate the %dx%dx%d input", PEAK_CHANNELS, PEAK_SIDE,
                PEAK_SIDE);
  const gint64 start = g_get_monotonic_time();
  for (int run = 0; x && (run < PEAK_WARMUP_RUNS + PEAK_MIN_RUNS ||
                          (g_get_monotonic_time() - start) * 1e-6 < PEAK_MIN_SECONDS);
       run++) {
    const gint64 t0 = g_get_monotonic_time();
    Tensor *y = conv2d(ops, conv, x, NULL, ACT_NONE, error);
    /* Never below the clock's resolution, so a success is never 0 FLOP/s. */
    const double seconds = MAX(g_get_monotonic_time() - t0, 1) * 1e-6;
    if (!y) {
      best_seconds = 0;
      break;
    }
    tensor_free(y);
    if (run >= PEAK_WARMUP_RUNS && (best_seconds == 0 || seconds < best_seconds))
      best_seconds = seconds;
  }
  tensor_free(x);
  conv2d_free(conv);
  ops_free(ops);
  g_free(input);
  g_free(bias);
  g_free(weight);
  return best_seconds > 0 ? flops / best_seconds : 0;
}
