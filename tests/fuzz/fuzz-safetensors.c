/* core/safetensors.c: any bytes as a .safetensors file. A file that opens
 * must be safe to read whole: every tensor is found by name and converted. */
#include "fuzz-common.h"
#include "safetensors.h"
#include "weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_write_file("input.safetensors", data, size);
  GError *error = NULL;
  StFile *file = st_open(path, &error);
  if (!file) {
    fuzz_expect_lcm_error(error);
    return 0;
  }
  for (guint i = 0; i < st_count(file); i++) {
    const StTensor *tensor = st_tensor_at(file, i);
    fuzz_assert(st_find(file, tensor->name) == tensor, "st_find misses a listed tensor");
    fuzz_assert((size_t)st_numel(tensor) * st_dtype_size(tensor->dtype) == tensor->nbytes,
                "a tensor's shape does not match its bytes");
    float *values = g_new(float, MAX(st_numel(tensor), 1));
    st_tensor_to_f32(tensor, values);
    g_free(values);
  }
  st_metadata(file, "format");
  st_close(file);

  /* The same file as a diffusers weight file (legacy attention names). */
  Weights *weights = weights_open_file(path, &error);
  if (!weights) {
    fuzz_expect_lcm_error(error);
    return 0;
  }
  fuzz_read_all_weights(weights);
  weights_free(weights);
  return 0;
}
