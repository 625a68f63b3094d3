/* Which oneDNN engines exist besides the CPU. */
#include "lcm.h"

#include <oneapi/dnnl/dnnl.h>

gboolean lcm_gpu_available(void) {
  /* A CPU-only oneDNN build reports 0 GPU engines. */
  return dnnl_engine_get_count(dnnl_gpu) > 0;
}
