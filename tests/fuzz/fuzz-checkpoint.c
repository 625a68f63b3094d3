/* core/model.c and core/weights.c: any bytes as an A1111 / civitai
 * single-file checkpoint (SD1.5 or SDXL): family detection, LDM / SGM ->
 * diffusers name mapping of all four networks,
 * configurations inferred from shapes, and every mapped tensor read. */
#include "fuzz-common.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void read_network(LcmModel *model, Component component) {
  GError *error = NULL;
  Weights *weights = model_weights(model, component, &error);
  if (!weights) {
    fuzz_expect_lcm_error(error);
    return;
  }
  fuzz_read_all_weights(weights);
}

/* The mapping and the inference on their own, whatever the family. */
static void map_every_network(const char *path) {
  GError *error = NULL;
  StFile *file = st_open(path, &error);
  if (!file) {
    fuzz_expect_lcm_error(error);
    return;
  }
  g_ptr_array_unref(weights_checkpoint_unmapped(file));
  for (Component c = COMPONENT_UNET; c < N_COMPONENTS; c++) {
    Weights *weights = weights_open_checkpoint(file, c, &error);
    if (!weights) {
      fuzz_expect_lcm_error(g_steal_pointer(&error));
      continue;
    }
    UNetConfig unet;
    VaeConfig vae;
    ClipConfig clip;
    gboolean ok = c == COMPONENT_UNET  ? unet_config_infer(weights, &unet, &error)
                  : c == COMPONENT_VAE ? vae_config_infer(weights, &vae, &error)
                                       : clip_config_infer(weights, &clip, &error);
    if (!ok) fuzz_expect_lcm_error(g_steal_pointer(&error));
    weights_free(weights);
  }
  for (guint i = 0; i < st_count(file); i++)
    for (int layers = 1; layers <= 3; layers++)
      g_free(weights_unet_diffusers_name(st_tensor_at(file, i)->name, layers));
  st_close(file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_write_file("checkpoint.safetensors", data, size);
  map_every_network(path);
  GError *error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  if (!model) {
    fuzz_expect_lcm_error(error);
    return 0;
  }
  UNetConfig unet;
  VaeConfig vae;
  ClipConfig clip;
  if (!model_unet_config(model, &unet, &error)) fuzz_expect_lcm_error(g_steal_pointer(&error));
  if (!model_vae_config(model, &vae, &error)) fuzz_expect_lcm_error(g_steal_pointer(&error));
  for (Component encoder = COMPONENT_TEXT_ENCODER; encoder <= COMPONENT_TEXT_ENCODER_2; encoder++)
    if (!model_clip_config(model, encoder, &clip, &error))
      fuzz_expect_lcm_error(g_steal_pointer(&error));
  for (Component c = COMPONENT_UNET; c < N_COMPONENTS; c++) read_network(model, c);
  lcm_model_free(model);
  return 0;
}
