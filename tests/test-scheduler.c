/* The scheduler_config.json reader (core/scheduler.c): the tiny model's
 * config and diffusers' defaults load; malformed configs (several found by
 * tests/fuzz/fuzz-config) fail with a message naming the key. */
#include "testutil.h"

#include <string.h>

static void test_loads_config_and_defaults(void) {
  char *path = test_golden_path("tiny-lcm/scheduler/scheduler_config.json");
  GError *error = NULL;
  LcmScheduler *from_file = lcm_scheduler_new(path, &error);
  g_assert_no_error(error);
  LcmScheduler *defaults = lcm_scheduler_new(NULL, &error);
  g_assert_no_error(error);
  int timesteps[LCM_MAX_STEPS];
  for (LcmScheduler **s = (LcmScheduler *[]){from_file, defaults, NULL}; *s; s++) {
    g_assert_cmpint(lcm_scheduler_train_steps(*s), ==, 1000);
    g_assert_cmpint(lcm_scheduler_timesteps(*s, 4, 1.0f, timesteps, &error), ==, 4);
    g_assert_no_error(error);
    g_assert_cmpint(timesteps[0], ==, 999);
    g_assert_cmpint(timesteps[3], ==, 259);
  }
  lcm_scheduler_free(from_file);
  lcm_scheduler_free(defaults);
  g_free(path);
}

static void test_malformed_configs(void) {
  static const struct {
    const char *json;
    const char *message; /* a part of the error */
  } cases[] = {
      /* an empty text parsed into no root: a GLib critical, then a crash */
      {"", "not a JSON object"},
      {"[1, 2]", "not a JSON object"},
      {"{\"num_train_timesteps\": ", "not a JSON object"},
      /* other types were read as 0 or NULL, or as a truncated int */
      {"{\"num_train_timesteps\": \"1000\"}", "'num_train_timesteps' must be an integer"},
      {"{\"num_train_timesteps\": 4294967298}",
       "'num_train_timesteps' is 4294967298, out of range"},
      {"{\"original_inference_steps\": 0}", "'original_inference_steps' is 0, out of range"},
      {"{\"original_inference_steps\": 2000}", "exceeds num_train_timesteps 1000"},
      {"{\"beta_start\": -0.5}", "'beta_start' is -0.5, out of range"},
      {"{\"beta_end\": [0.012]}", "'beta_end' must be a number"},
      {"{\"timestep_scaling\": \"10\"}", "'timestep_scaling' must be a number"},
      {"{\"set_alpha_to_one\": 1}", "'set_alpha_to_one' must be true or false"},
      {"{\"prediction_type\": 3}", "'prediction_type' must be a string"},
      {"{\"beta_schedule\": {}}", "'beta_schedule' must be a string"},
  };
  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    GError *error = NULL;
    g_assert_null(lcm_scheduler_new_from_json(cases[i].json, "scheduler_config.json", &error));
    test_expect_error(error, LCM_ERROR_FORMAT, "scheduler_config.json", cases[i].message, NULL);
    g_error_free(error);
  }
  /* null and integers for numbers are fine, as in diffusers */
  GError *error = NULL;
  LcmScheduler *s = lcm_scheduler_new_from_json(
      "{\"beta_schedule\": null, \"beta_start\": 0, \"timestep_scaling\": 10}", "x", &error);
  g_assert_no_error(error);
  lcm_scheduler_free(s);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/scheduler/loads-config-and-defaults", test_loads_config_and_defaults);
  g_test_add_func("/scheduler/malformed-configs", test_malformed_configs);
  return g_test_run();
}
