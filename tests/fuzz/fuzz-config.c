/* core/config.c, core/scheduler.c and model_index.json (core/model.c): any
 * text as each network's config.json, as scheduler_config.json and as a
 * pipeline folder's model_index.json. */
#include "config.h"
#include "fuzz-common.h"

#include <glib/gstdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_scheduler(const char *json) {
  GError *error = NULL;
  LcmScheduler *scheduler = lcm_scheduler_new_from_json(json, "scheduler_config.json", &error);
  if (!scheduler) {
    fuzz_expect_lcm_error(error);
    return;
  }
  const float strengths[] = {1.0f, 0.5f, 0.1f};
  for (int steps = 1; steps <= 8; steps++) {
    for (size_t s = 0; s < G_N_ELEMENTS(strengths); s++) {
      int timesteps[LCM_MAX_STEPS];
      int n = lcm_scheduler_timesteps(scheduler, steps, strengths[s], timesteps, &error);
      if (n == 0) {
        fuzz_expect_lcm_error(g_steal_pointer(&error));
        continue;
      }
      float x[4] = {0.1f, -0.2f, 0.3f, 0.5f}, out[4] = {0}, denoised[4], prev[4];
      for (int i = 0; i < n; i++) {
        fuzz_assert(timesteps[i] >= 0 && timesteps[i] < lcm_scheduler_train_steps(scheduler),
                    "a timestep outside the training schedule");
        lcm_scheduler_step(scheduler, x, timesteps[i], i + 1 < n ? timesteps[i + 1] : -1, x,
                           i + 1 < n ? x : NULL, 4, denoised, prev);
        lcm_scheduler_add_noise(scheduler, x, x, timesteps[i], 4, out);
      }
    }
  }
  lcm_scheduler_free(scheduler);
}

static void check_model_index(const uint8_t *data, size_t size) {
  /* A pipeline folder holding only this model_index.json: the index is read,
   * then the missing unet/ folder is reported. */
  const char *dir = fuzz_scratch_dir();
  fuzz_write_file("model_index.json", data, size);
  GError *error = NULL;
  LcmModel *model = lcm_model_open(dir, &error);
  fuzz_assert(model == NULL, "a folder without networks opened as a model");
  fuzz_expect_lcm_error(error);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *json = fuzz_string(data, size);
  GError *error = NULL;
  ClipConfig clip;
  UNetConfig unet;
  VaeConfig vae;
  if (!clip_config_from_json(json, "config.json", &clip, &error))
    fuzz_expect_lcm_error(g_steal_pointer(&error));
  if (!unet_config_from_json(json, "config.json", &unet, &error))
    fuzz_expect_lcm_error(g_steal_pointer(&error));
  if (!vae_config_from_json(json, "config.json", &vae, &error))
    fuzz_expect_lcm_error(g_steal_pointer(&error));
  /* From a file too: the parser then sees the bytes past a NUL. */
  const char *path = fuzz_write_file("config.json", data, size);
  if (!unet_config_read(path, &unet, &error)) fuzz_expect_lcm_error(g_steal_pointer(&error));
  check_scheduler(json);
  check_model_index(data, size);
  g_free(json);
  return 0;
}
