/* core/lora.c: any bytes as a LoRA .safetensors merged into the tiny test
 * model (kohya and diffusers / peft key names matched with its UNet and text
 * encoder). A LoRA that is accepted is merged: every weight is read. */
#include "fuzz-common.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static LcmModel *model; /* reopened after each accepted LoRA */

static LcmModel *open_tiny_model(void) {
  char *path = fuzz_test_data("golden/tiny-lcm");
  GError *error = NULL;
  LcmModel *opened = lcm_model_open(path, &error);
  fuzz_assert(opened != NULL, error ? error->message : "the tiny model does not open");
  g_free(path);
  return opened;
}

static void read_network(Component component) {
  GError *error = NULL;
  Weights *weights = model_weights(model, component, &error);
  fuzz_assert(weights != NULL, "the tiny model lacks a network");
  fuzz_read_all_weights(weights);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!model) model = open_tiny_model();
  const char *path = fuzz_write_file("lora.safetensors", data, size);
  GError *error = NULL;
  char **networks = lcm_lora_networks(path, &error);
  if (!networks) fuzz_expect_lcm_error(g_steal_pointer(&error));
  g_strfreev(networks);

  if (!lcm_model_add_lora(model, path, 0.75f, &error)) {
    fuzz_expect_lcm_error(error);
    return 0;
  }
  read_network(COMPONENT_UNET);
  read_network(COMPONENT_TEXT_ENCODER);
  lcm_model_free(model);
  model = NULL;
  return 0;
}
