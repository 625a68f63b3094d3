/* Error domain and precision selection. */
#include "lcm.h"

#include <oneapi/dnnl/dnnl.h>
#include <stdarg.h>
#include <string.h>

GQuark lcm_error_quark(void) {
  return g_quark_from_static_string("lcm-error-quark");
}

gboolean lcm_error_invalid(GError **error, const char *format, ...) {
  va_list args;
  va_start(args, format);
  g_propagate_error(error, g_error_new_valist(LCM_ERROR, LCM_ERROR_INVALID, format, args));
  va_end(args);
  return FALSE;
}

LcmPrecision lcm_precision_resolve(LcmPrecision precision) {
  if (precision != LCM_PRECISION_AUTO) return precision;
  /* bf16 pays off only with native bf16 dot products (AVX512-BF16 or AMX);
   * elsewhere oneDNN emulates it and fp32 is as fast and exact. */
  /* ISA values are nested bit sets: AMX ISAs contain avx512_core_bf16. */
  dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  return ((unsigned)isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) ==
                 (unsigned)dnnl_cpu_isa_avx512_core_bf16
             ? LCM_PRECISION_BF16
             : LCM_PRECISION_FP32;
}

const char *lcm_precision_name(LcmPrecision precision) {
  switch (precision) {
  case LCM_PRECISION_FP32:
    return "fp32";
  case LCM_PRECISION_BF16:
    return "bf16";
  default:
    return "auto";
  }
}

gboolean lcm_precision_parse(const char *name, LcmPrecision *out, GError **error) {
  static const struct {
    const char *name;
    LcmPrecision value;
  } names[] = {
      {"auto", LCM_PRECISION_AUTO}, {"fp32", LCM_PRECISION_FP32}, {"bf16", LCM_PRECISION_BF16}};
  for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
    if (g_ascii_strcasecmp(name, names[i].name) == 0) {
      *out = names[i].value;
      return TRUE;
    }
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "unknown precision '%s' (use auto, fp32 or bf16)", name);
  return FALSE;
}
