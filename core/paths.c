/* Where models and the project's data live. */
#include "lcm.h"

char *lcm_find_data_file(const char *relative) {
  const char *roots[] = {g_getenv("GIMP_LCM_DATADIR"), LCM_DATADIR, LCM_SOURCE_DATADIR};
  for (size_t i = 0; i < G_N_ELEMENTS(roots); i++) {
    if (!roots[i] || !*roots[i]) continue;
    char *path = g_build_filename(roots[i], relative, NULL);
    if (g_file_test(path, G_FILE_TEST_EXISTS)) return path;
    g_free(path);
  }
  return NULL;
}

char *lcm_models_dir(void) {
  const char *env = g_getenv("GIMP_LCM_MODELS");
  if (env && *env) return g_strdup(env);
  return g_build_filename(g_get_user_data_dir(), "gimp-lcm", "models", NULL);
}
