/* Internal view of an LcmModel: where each network's weights and
 * configuration come from, opened lazily. */
#pragma once

#include "config.h"
#include "lcm.h"
#include "weights.h"

/* The weights of one network; owned by the model. */
Weights *model_weights(LcmModel *model, Component component, GError **error);
/* encoder: COMPONENT_TEXT_ENCODER or COMPONENT_TEXT_ENCODER_2 */
gboolean model_clip_config(LcmModel *model, Component encoder, ClipConfig *out, GError **error);
gboolean model_unet_config(LcmModel *model, UNetConfig *out, GError **error);
gboolean model_vae_config(LcmModel *model, VaeConfig *out, GError **error);
/* scheduler_config.json of the model, or NULL (then the LCM defaults hold). */
const char *model_scheduler_config(const LcmModel *model);
/* SDXL's second tokenizer (pads with "!"). */
LcmTokenizer *model_load_tokenizer_2(LcmModel *model, GError **error);
/* Whether a missing negative prompt gives all-zero uncond embeddings. */
gboolean model_force_zeros_for_empty_prompt(const LcmModel *model);
