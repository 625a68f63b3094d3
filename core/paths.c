/* Where models and the project's data live. */
#include "lcm.h"
#include "safetensors.h"

#include <string.h>

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

/* A checkpoint holds a UNet; LoRAs and TAESD files beside it do not. */
static gboolean is_checkpoint(const char *path) {
  StFile *file = st_open(path, NULL);
  gboolean yes = FALSE;
  for (guint i = 0; file && !yes && i < st_count(file); i++)
    yes = g_str_has_prefix(st_tensor_at(file, i)->name, "model.diffusion_model.");
  if (file) st_close(file);
  return yes;
}

static gboolean looks_like_model(const char *dir, const char *name) {
  char *path = g_build_filename(dir, name, NULL);
  char *index = g_build_filename(path, "model_index.json", NULL);
  gboolean yes = g_file_test(index, G_FILE_TEST_IS_REGULAR) ||
                 (g_str_has_suffix(name, ".safetensors") && is_checkpoint(path));
  g_free(index);
  g_free(path);
  return yes;
}

static int compare_names(gconstpointer a, gconstpointer b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

char *lcm_default_model(gboolean *is_test_model) {
  char *dir = lcm_models_dir();
  GDir *d = g_dir_open(dir, 0, NULL);
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (const char *name; d && (name = g_dir_read_name(d));)
    if (looks_like_model(dir, name)) g_ptr_array_add(names, g_strdup(name));
  if (d) g_dir_close(d);
  g_ptr_array_sort(names, compare_names);
  char *found = names->len ? g_build_filename(dir, names->pdata[0], NULL) : NULL;
  g_ptr_array_unref(names);
  g_free(dir);
  if (is_test_model) *is_test_model = found == NULL;
  return found ? found : lcm_find_data_file("tiny-lcm");
}
