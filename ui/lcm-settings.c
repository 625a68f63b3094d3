/* LcmSettings: what the dialog edits and the host stores, and the helpers
 * that turn settings into a loaded pipeline and a run's parameters. */
#include "lcm-dialog.h"

#include <math.h>
#include <string.h>

void lcm_settings_init(LcmSettings *settings) {
  *settings = (LcmSettings){
      .mode = LCM_MODE_TXT2IMG,
      .steps = 4,
      .guidance = 0,
      .strength = 0.6,
      .seed = -1,
      .width = 512,
      .height = 512,
      .precision = LCM_PRECISION_AUTO,
      .device = LCM_DEVICE_CPU,
      .output = LCM_OUTPUT_NEW_LAYER,
  };
}

void lcm_settings_clear(LcmSettings *settings) {
  g_free(settings->prompt);
  g_free(settings->negative_prompt);
  g_free(settings->model_path);
  g_free(settings->loras);
  lcm_settings_init(settings);
}

void lcm_settings_copy(LcmSettings *dst, const LcmSettings *src) {
  if (dst == src) return;
  lcm_settings_clear(dst);
  *dst = *src;
  dst->prompt = g_strdup(src->prompt);
  dst->negative_prompt = g_strdup(src->negative_prompt);
  dst->model_path = g_strdup(src->model_path);
  dst->loras = g_strdup(src->loras);
}

static void lora_entry_clear(gpointer data) {
  g_free(((LcmLoraEntry *)data)->path);
}

GArray *lcm_loras_parse(const char *loras, GError **error) {
  GArray *entries = g_array_new(FALSE, TRUE, sizeof(LcmLoraEntry));
  g_array_set_clear_func(entries, lora_entry_clear);
  g_auto(GStrv) items = g_strsplit(loras ? loras : "", ";", -1);
  for (char **item = items; *item; item++) {
    char *text = g_strstrip(*item);
    if (!*text) continue;
    LcmLoraEntry entry = {.scale = 1.0};
    const char *colon = strrchr(text, ':');
    /* A ':' followed by a path ("C:\\x", "/a:b/c") belongs to the path. */
    char *end = NULL;
    double scale = colon ? g_ascii_strtod(colon + 1, &end) : 0;
    if (colon && end != colon + 1 && *end == '\0' && isfinite(scale)) {
      entry.path = g_strndup(text, colon - text);
      entry.scale = scale;
    } else if (colon && colon[1] && !strpbrk(colon + 1, "/\\")) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                  "LoRA list entry '%s': the scale after ':' is not a number (expected "
                  "\"file:scale;file:scale\")",
                  text);
      g_array_unref(entries);
      return NULL;
    } else {
      entry.path = g_strdup(text);
    }
    g_array_append_val(entries, entry);
  }
  return entries;
}

char *lcm_loras_format(const GArray *entries) {
  GString *out = g_string_new(NULL);
  for (guint i = 0; i < entries->len; i++) {
    const LcmLoraEntry *entry = &g_array_index(entries, LcmLoraEntry, i);
    char scale[G_ASCII_DTOSTR_BUF_SIZE];
    g_ascii_formatd(scale, sizeof scale, "%g", entry->scale);
    g_string_append_printf(out, "%s%s:%s", i ? ";" : "", entry->path, scale);
  }
  return g_string_free(out, FALSE);
}

LcmPipeline *lcm_settings_load_pipeline(const LcmSettings *settings, gboolean *is_test_model,
                                        GError **error) {
  g_autofree char *path = lcm_resolve(settings->model_path, LCM_ASSET_MODEL, is_test_model, error);
  if (!path) return NULL;
  g_autoptr(GArray) loras = lcm_loras_parse(settings->loras, error);
  if (!loras) return NULL;
  LcmModel *model = lcm_model_open(path, error);
  if (!model) return NULL;
  LcmPipeline *pipeline = NULL;
  gboolean merged = TRUE;
  for (guint i = 0; i < loras->len && merged; i++) {
    const LcmLoraEntry *entry = &g_array_index(loras, LcmLoraEntry, i);
    g_autofree char *lora = lcm_resolve(entry->path, LCM_ASSET_LORA, NULL, error);
    merged = lora && lcm_model_add_lora(model, lora, (float)entry->scale, error);
  }
  if (merged) pipeline = lcm_pipeline_new(model, settings->precision, error);
  lcm_model_free(model);
  return pipeline;
}

char *lcm_settings_pipeline_key(const LcmSettings *settings) {
  return g_strdup_printf("%s\n%s\n%d", settings->model_path ? settings->model_path : "",
                         settings->loras ? settings->loras : "", (int)settings->precision);
}

uint64_t lcm_settings_resolve_seed(const LcmSettings *settings) {
  if (settings->seed >= 0) return (uint64_t)settings->seed & 0xffffffffu;
  return g_random_int();
}

void lcm_settings_to_params(const LcmSettings *settings, const LcmPipeline *pipeline, uint64_t seed,
                            LcmPipelineParams *params) {
  params->mode = settings->mode;
  params->prompt = settings->prompt;
  params->negative_prompt = settings->negative_prompt;
  params->steps = CLAMP(settings->steps, LCM_SETTINGS_MIN_STEPS, LCM_SETTINGS_MAX_STEPS);
  params->guidance_scale =
      settings->guidance > 0 ? settings->guidance : lcm_pipeline_default_guidance(pipeline);
  params->clip_skip = settings->clip_skip;
  params->strength = settings->strength;
  params->seed = seed;
  params->width = settings->width;
  params->height = settings->height;
}

int lcm_family_native_side(LcmModelFamily family) {
  return family == LCM_FAMILY_SDXL ? 1024 : 512;
}

/* SDXL's are the buckets it was trained on (about a megapixel each). */
static const LcmSize sd15_sizes[] = {{512, 512}, {512, 768}, {768, 512}, {448, 640},
                                     {640, 448}, {432, 768}, {768, 432}};
static const LcmSize sdxl_sizes[] = {{1024, 1024}, {1152, 896}, {896, 1152},
                                     {1216, 832},  {832, 1216}, {1344, 768},
                                     {768, 1344},  {1536, 640}, {640, 1536}};

const LcmSize *lcm_family_sizes(LcmModelFamily family, size_t *count) {
  gboolean xl = family == LCM_FAMILY_SDXL;
  *count = xl ? G_N_ELEMENTS(sdxl_sizes) : G_N_ELEMENTS(sd15_sizes);
  return xl ? sdxl_sizes : sd15_sizes;
}

void lcm_family_fit_size(LcmModelFamily family, int *width, int *height) {
  const double largest_sd15 = 768.0 * 768.0;
  gboolean sdxl_sized = (double)*width * *height > largest_sd15;
  if (sdxl_sized == (family == LCM_FAMILY_SDXL) || *width <= 0 || *height <= 0) return;
  size_t count;
  const LcmSize *sizes = lcm_family_sizes(family, &count);
  double aspect = log((double)*width / *height);
  const LcmSize *best = &sizes[0];
  for (size_t i = 1; i < count; i++)
    if (fabs(log((double)sizes[i].width / sizes[i].height) - aspect) <
        fabs(log((double)best->width / best->height) - aspect))
      best = &sizes[i];
  *width = best->width;
  *height = best->height;
}

gboolean lcm_settings_model_family(const LcmSettings *settings, LcmModelFamily *family,
                                   GError **error) {
  g_autofree char *path = lcm_resolve(settings->model_path, LCM_ASSET_MODEL, NULL, error);
  LcmModel *model = path ? lcm_model_open(path, error) : NULL;
  if (!model) return FALSE;
  *family = lcm_model_family(model);
  lcm_model_free(model);
  return TRUE;
}

/* One output sample: the average of the source pixels its footprint covers
 * when shrinking (box filter), a bilinear tap when growing. */
static void resample_axis(int src_len, int dst_len, int dst_index, int *first, int *last,
                          float *t) {
  double scale = (double)src_len / dst_len;
  if (scale >= 1) {
    *first = (int)floor(dst_index * scale);
    *last = MAX(*first, (int)ceil((dst_index + 1) * scale) - 1);
    *last = MIN(*last, src_len - 1);
    *t = -1;
  } else {
    double x = (dst_index + 0.5) * scale - 0.5;
    x = CLAMP(x, 0, src_len - 1);
    *first = (int)floor(x);
    *last = MIN(*first + 1, src_len - 1);
    *t = (float)(x - *first);
  }
}

LcmImage *lcm_image_resize(const LcmImage *image, int width, int height) {
  LcmImage *out = lcm_image_new(width, height, image->channels);
  int c = image->channels;
  for (int y = 0; y < height; y++) {
    int y0, y1;
    float ty;
    resample_axis(image->height, height, y, &y0, &y1, &ty);
    for (int x = 0; x < width; x++) {
      int x0, x1;
      float tx;
      resample_axis(image->width, width, x, &x0, &x1, &tx);
      float *dst = out->data + ((size_t)y * width + x) * c;
      for (int k = 0; k < c; k++) {
        double sum = 0, weight_sum = 0;
        for (int sy = y0; sy <= y1; sy++)
          for (int sx = x0; sx <= x1; sx++) {
            double wy = ty < 0 ? 1 : (sy == y0 ? 1 - ty : ty);
            double wx = tx < 0 ? 1 : (sx == x0 ? 1 - tx : tx);
            if (y0 == y1) wy = 1;
            if (x0 == x1) wx = 1;
            sum += wy * wx * image->data[((size_t)sy * image->width + sx) * c + k];
            weight_sum += wy * wx;
          }
        dst[k] = (float)(sum / weight_sum);
      }
    }
  }
  return out;
}
