/* Internal view of an LcmModel: where each network's weights and
 * configuration come from, opened lazily. */
#pragma once

#include "config.h"
#include "lcm.h"
#include "weights.h"

/* The weights of one network; owned by the model. */
Weights *model_weights(LcmModel *model, Component component, GError **error);
gboolean model_clip_config(LcmModel *model, ClipConfig *out, GError **error);
gboolean model_unet_config(LcmModel *model, UNetConfig *out, GError **error);
gboolean model_vae_config(LcmModel *model, VaeConfig *out, GError **error);
/* scheduler_config.json of the model, or NULL (then the LCM defaults hold). */
const char *model_scheduler_config(const LcmModel *model);
