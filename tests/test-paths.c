/* The models folder and the default-model choice. */
#include "lcm.h"
#include "safetensors.h"
#include "testutil.h"

#include <glib/gstdio.h>

static void write_tensor_file(const char *path, const char *tensor_name) {
  const int64_t shape[1] = {1};
  const float value = 1.0f;
  const StWriteTensor t = {tensor_name, ST_F32, 1, shape, &value};
  GError *error = NULL;
  g_assert_true(st_write(path, &t, 1, NULL, &error));
  g_assert_no_error(error);
}

static void test_models_dir_override(void) {
  g_setenv("GIMP_LCM_MODELS", "/some/where", TRUE);
  char *dir = lcm_models_dir();
  g_assert_cmpstr(dir, ==, "/some/where");
  g_free(dir);
  g_unsetenv("GIMP_LCM_MODELS");
  dir = lcm_models_dir();
  g_assert_true(g_str_has_suffix(dir, "gimp-lcm/models"));
  g_free(dir);
}

static void test_default_model_choice(void) {
  char *dir = g_dir_make_tmp("lcm-models-XXXXXX", NULL);
  g_setenv("GIMP_LCM_MODELS", dir, TRUE);

  /* A LoRA or a TAESD file is no model: the bundled test model is used. */
  char *lora = g_build_filename(dir, "a-style-lora.safetensors", NULL);
  write_tensor_file(lora, "lora_unet_conv_in.lora_down.weight");
  gboolean is_test_model = FALSE;
  char *chosen = lcm_default_model(&is_test_model);
  g_assert_true(is_test_model);
  g_assert_nonnull(chosen);
  g_assert_true(g_str_has_suffix(chosen, "tiny-lcm"));
  g_free(chosen);

  /* Checkpoints and diffusers folders (SD1.5's and SDXL's) are models; the
   * first by name wins. */
  char *ckpt = g_build_filename(dir, "b-checkpoint.safetensors", NULL);
  write_tensor_file(ckpt, "model.diffusion_model.conv_in.weight");
  char *folder = g_build_filename(dir, "c-diffusers", NULL);
  g_assert_cmpint(g_mkdir(folder, 0755), ==, 0);
  char *index = g_build_filename(folder, "model_index.json", NULL);
  /* An SDXL pipeline is a model like any other. */
  g_assert_true(
      g_file_set_contents(index, "{\"_class_name\": \"StableDiffusionXLPipeline\"}", -1, NULL));
  chosen = lcm_default_model(&is_test_model);
  g_assert_false(is_test_model);
  g_assert_cmpstr(chosen, ==, ckpt);
  g_free(chosen);

  g_assert_cmpint(g_unlink(ckpt), ==, 0);
  chosen = lcm_default_model(&is_test_model);
  g_assert_false(is_test_model);
  g_assert_cmpstr(chosen, ==, folder);
  g_free(chosen);

  g_unlink(index);
  g_rmdir(folder);
  g_unlink(lora);
  g_rmdir(dir);
  g_unsetenv("GIMP_LCM_MODELS");
  g_free(index);
  g_free(folder);
  g_free(ckpt);
  g_free(lora);
  g_free(dir);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/paths/models-dir-override", test_models_dir_override);
  g_test_add_func("/paths/default-model-choice", test_default_model_choice);
  return g_test_run();
}
