/* Memory guard: refuses a run up front when the machine cannot hold the
 * model's packed weights and the working set at the requested size, instead
 * of letting the kernel's OOM killer end GIMP half-way through loading. */
#include "lcm.h"
#include "model.h"

#include <stdlib.h>
#include <string.h>

#define MIB ((guint64)1 << 20)

/* SSD-1B's UNet (LCM variant): what an SDXL-family user can switch to. */
#define SSD1B_UNET_PARAMETERS G_GINT64_CONSTANT(1331416324)

/* Working values of the UNet per latent pixel and base channel: the skip
 * connections of every level (layers_per_block + 1 per level, the first level
 * the largest) and a few temporaries of the running block. */
#define UNET_ACTIVATION_TENSORS 16
/* The VAE decoder at full resolution: its input, output, normalised copy and
 * shortcut, plus the upsampler's input at the same width. */
#define VAE_ACTIVATION_TENSORS 6
/* Activations stay fp32 in the norms and accumulations whatever the
 * precision; counted at 4 bytes so the estimate errs on the safe side. */
#define ACTIVATION_BYTES 4

static int bytes_per_parameter(LcmPrecision precision) {
  return lcm_precision_resolve(precision) == LCM_PRECISION_BF16 ? 2 : 4;
}

/* The parameters of one network (0 when the model has none, e.g. no second
 * text encoder). */
static gboolean network_parameters(LcmModel *model, Component component, int64_t *out,
                                   GError **error) {
  *out = 0;
  if (component == COMPONENT_TEXT_ENCODER_2 && lcm_model_family(model) != LCM_FAMILY_SDXL)
    return TRUE;
  Weights *weights = model_weights(model, component, error);
  if (!weights) return FALSE;
  *out = weights_parameter_count(weights);
  return TRUE;
}

typedef struct {
  int64_t parameters[N_COMPONENTS];
  guint64 activation_bytes;
} MemoryPlan;

static gboolean memory_plan(LcmModel *model, int width, int height, MemoryPlan *plan,
                            GError **error) {
  if (!model || width <= 0 || height <= 0 || width > LCM_MAX_IMAGE_SIDE ||
      height > LCM_MAX_IMAGE_SIDE)
    return lcm_error_invalid(error, "memory estimate: no model, or a size %dx%d out of range",
                             width, height);
  UNetConfig unet;
  VaeConfig vae;
  if (!model_unet_config(model, &unet, error) || !model_vae_config(model, &vae, error))
    return FALSE;
  for (int c = 0; c < N_COMPONENTS; c++)
    if (!network_parameters(model, (Component)c, &plan->parameters[c], error)) return FALSE;
  const guint64 pixels = (guint64)width * height;
  const int factor = 1 << (vae.n_blocks - 1);
  const guint64 latent_pixels = pixels / ((guint64)factor * factor);
  const guint64 unet_bytes = (guint64)UNET_ACTIVATION_TENSORS * unet.block_out_channels[0] *
                             latent_pixels * ACTIVATION_BYTES;
  const guint64 vae_bytes =
      (guint64)VAE_ACTIVATION_TENSORS * vae.block_out_channels[0] * pixels * ACTIVATION_BYTES;
  plan->activation_bytes = MAX(unet_bytes, vae_bytes);
  return TRUE;
}

static guint64 plan_bytes(const MemoryPlan *plan, LcmPrecision precision) {
  int64_t parameters = 0;
  for (int c = 0; c < N_COMPONENTS; c++) parameters += plan->parameters[c];
  return (guint64)parameters * bytes_per_parameter(precision) + plan->activation_bytes;
}

gboolean lcm_model_memory_needed(LcmModel *model, LcmPrecision precision, int width, int height,
                                 guint64 *bytes, GError **error) {
  MemoryPlan plan;
  if (!memory_plan(model, width, height, &plan, error)) return FALSE;
  *bytes = plan_bytes(&plan, precision);
  return TRUE;
}

/* A field of /proc/meminfo in bytes, or 0. */
static guint64 meminfo_bytes(const char *meminfo, const char *field) {
  g_autofree char *key = g_strconcat("\n", field, ":", NULL);
  const char *line = g_str_has_prefix(meminfo, key + 1) ? meminfo : strstr(meminfo, key);
  if (!line) return 0;
  line = strchr(line + 1, ':');
  return line ? g_ascii_strtoull(line + 1, NULL, 10) * 1024 : 0;
}

guint64 lcm_memory_available(void) {
  const char *limit = g_getenv("GIMP_LCM_MEMORY_LIMIT_MB");
  if (limit && *limit) {
    char *end = NULL;
    const guint64 mb = g_ascii_strtoull(limit, &end, 10);
    if (end != limit && *end == '\0') return mb * MIB;
    g_warning("GIMP_LCM_MEMORY_LIMIT_MB='%s' is not a number of MiB; ignored", limit);
  }
  g_autofree char *meminfo = NULL;
  if (!g_file_get_contents("/proc/meminfo", &meminfo, NULL, NULL)) return 0;
  const guint64 available = meminfo_bytes(meminfo, "MemAvailable");
  return available ? available : meminfo_bytes(meminfo, "MemTotal");
}

static double gib(guint64 bytes) {
  return bytes / (double)(1 << 30);
}

gboolean lcm_model_check_memory(LcmModel *model, LcmPrecision precision, int width, int height,
                                GError **error) {
  MemoryPlan plan;
  if (!memory_plan(model, width, height, &plan, error)) return FALSE;
  const guint64 available = lcm_memory_available();
  const guint64 needed = plan_bytes(&plan, precision);
  if (available == 0 || needed <= available) return TRUE;

  const LcmPrecision resolved = lcm_precision_resolve(precision);
  GString *advice = g_string_new("");
  const guint64 bf16 = plan_bytes(&plan, LCM_PRECISION_BF16);
  if (resolved != LCM_PRECISION_BF16 && bf16 <= available)
    g_string_append_printf(advice, "; bf16 precision needs %.1f GiB and fits", gib(bf16));
  if (lcm_model_family(model) == LCM_FAMILY_SDXL &&
      plan.parameters[COMPONENT_UNET] > SSD1B_UNET_PARAMETERS) {
    MemoryPlan ssd1b = plan;
    ssd1b.parameters[COMPONENT_UNET] = SSD1B_UNET_PARAMETERS;
    const LcmPrecision choices[] = {resolved, LCM_PRECISION_BF16};
    for (size_t i = 0; i < G_N_ELEMENTS(choices); i++) {
      const guint64 ssd1b_bytes = plan_bytes(&ssd1b, choices[i]);
      if (ssd1b_bytes <= available) {
        g_string_append_printf(advice, "; an SSD-1B model in %s needs %.1f GiB and fits",
                               lcm_precision_name(choices[i]), gib(ssd1b_bytes));
        break;
      }
    }
  }
  if (!advice->len) g_string_append(advice, "; a smaller image size needs less");
  g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
              "%s: a %dx%d run in %s needs about %.1f GiB of memory (%.1f GiB of weights, %.1f GiB "
              "of working memory), but only %.1f GiB is available%s",
              lcm_model_describe(model), width, height, lcm_precision_name(resolved), gib(needed),
              gib(needed - plan.activation_bytes), gib(plan.activation_bytes), gib(available),
              advice->str);
  g_string_free(advice, TRUE);
  return FALSE;
}
