/* core/lora.c: any bytes as a LoRA .safetensors merged into the tiny SD1.5
 * and the tiny SDXL test model (kohya lora_te_ / lora_te1_ / lora_te2_ /
 * lora_unet_ with diffusers, LDM or SGM paths, and diffusers / peft names
 * matched with their UNet and text encoders). A LoRA that is accepted is
 * merged: every weight of the networks it may change is read. */
#include "fuzz-common.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const model_folders[] = {"golden/tiny-lcm", "golden-sdxl/tiny-sdxl-lcm"};
static LcmModel *models[G_N_ELEMENTS(model_folders)]; /* reopened after each accepted LoRA */

static LcmModel *open_tiny_model(const char *folder) {
  char *path = fuzz_test_data(folder);
  GError *error = NULL;
  LcmModel *opened = lcm_model_open(path, &error);
  fuzz_assert(opened != NULL, error ? error->message : "a tiny model does not open");
  g_free(path);
  return opened;
}

static void read_network(LcmModel *model, Component component) {
  GError *error = NULL;
  Weights *weights = model_weights(model, component, &error);
  fuzz_assert(weights != NULL, "a tiny model lacks a network");
  fuzz_read_all_weights(weights);
}

static void merge_into(size_t m, const char *path) {
  if (!models[m]) models[m] = open_tiny_model(model_folders[m]);
  LcmModel *model = models[m];
  GError *error = NULL;
  if (!lcm_model_add_lora(model, path, 0.75f, &error)) {
    fuzz_expect_lcm_error(error);
    return;
  }
  read_network(model, COMPONENT_UNET);
  read_network(model, COMPONENT_TEXT_ENCODER);
  if (lcm_model_family(model) == LCM_FAMILY_SDXL) read_network(model, COMPONENT_TEXT_ENCODER_2);
  lcm_model_free(model);
  models[m] = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_write_file("lora.safetensors", data, size);
  GError *error = NULL;
  char **networks = lcm_lora_networks(path, &error);
  if (!networks) fuzz_expect_lcm_error(g_steal_pointer(&error));
  g_strfreev(networks);
  for (size_t m = 0; m < G_N_ELEMENTS(model_folders); m++) merge_into(m, path);
  return 0;
}
