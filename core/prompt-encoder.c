/* Prompts to the UNet's text conditioning, as diffusers' encode_prompt
 * computes it for each family:
 *   SD1.5: context = final_layer_norm(hidden_states[-(1 + clip_skip)]) of
 *          the CLIP encoder (clip skip 0 = last_hidden_state);
 *   SDXL:  context = cat(TE1 hidden_states[-(2 + clip_skip)],
 *          TE2 hidden_states[-(2 + clip_skip)]) along channels, without the
 *          final layer norm; pooled = TE2's projected EOS vector
 *          (text_embeds), from the last layer whatever the clip skip.
 * With classifier-free guidance the negative prompt ignores clip skip (as
 * diffusers does), and in SDXL a missing negative prompt gives all-zero
 * embeddings when the model says force_zeros_for_empty_prompt. */
#include "model.h"

#include <string.h>

struct LcmPromptEncoder {
  LcmModelFamily family;
  LcmTokenizer *tokenizer, *tokenizer_2; /* tokenizer_2: SDXL only */
  LcmTextEncoder *encoder, *encoder_2;   /* encoder_2: SDXL only */
  gboolean force_zeros_for_empty_prompt; /* SDXL only */
};

void lcm_prompt_encoder_free(LcmPromptEncoder *encoder) {
  if (!encoder) return;
  lcm_tokenizer_free(encoder->tokenizer);
  lcm_tokenizer_free(encoder->tokenizer_2);
  lcm_text_encoder_free(encoder->encoder);
  lcm_text_encoder_free(encoder->encoder_2);
  g_free(encoder);
}

LcmPromptEncoder *lcm_prompt_encoder_new(LcmModel *model, LcmPrecision precision, GError **error) {
  LcmPromptEncoder *pe = g_new0(LcmPromptEncoder, 1);
  pe->family = lcm_model_family(model);
  gboolean ok = (pe->tokenizer = lcm_model_load_tokenizer(model, error)) &&
                (pe->encoder = lcm_text_encoder_load(model, precision, error));
  if (ok && pe->family == LCM_FAMILY_SDXL) {
    pe->force_zeros_for_empty_prompt = model_force_zeros_for_empty_prompt(model);
    ok = (pe->tokenizer_2 = model_load_tokenizer_2(model, error)) &&
         (pe->encoder_2 = lcm_text_encoder_load_2(model, precision, error));
  }
  if (!ok) {
    lcm_prompt_encoder_free(pe);
    return NULL;
  }
  return pe;
}

LcmModelFamily lcm_prompt_encoder_family(const LcmPromptEncoder *encoder) {
  return encoder->family;
}

int lcm_prompt_encoder_context_dim(const LcmPromptEncoder *encoder) {
  return lcm_text_encoder_hidden_size(encoder->encoder) +
         (encoder->encoder_2 ? lcm_text_encoder_hidden_size(encoder->encoder_2) : 0);
}

int lcm_prompt_encoder_pooled_dim(const LcmPromptEncoder *encoder) {
  return encoder->encoder_2 ? lcm_text_encoder_pooled_size(encoder->encoder_2) : 0;
}

int lcm_prompt_encoder_max_clip_skip(const LcmPromptEncoder *encoder) {
  /* SDXL already starts one layer back */
  int layers = lcm_text_encoder_layers(encoder->encoder);
  if (encoder->encoder_2) layers = MIN(layers, lcm_text_encoder_layers(encoder->encoder_2)) - 1;
  return layers;
}

gboolean lcm_prompt_encoder_encode_ids(LcmPromptEncoder *encoder, const int32_t *ids,
                                       const int32_t *ids_2, int batch, int clip_skip,
                                       float *context, float *pooled, GError **error) {
  const int max_skip = lcm_prompt_encoder_max_clip_skip(encoder);
  if (clip_skip < 0 || clip_skip > max_skip)
    return lcm_error_invalid(error,
                             "clip skip %d is out of range: this model's text encoder "
                             "allows 0 to %d",
                             clip_skip, max_skip);
  if (batch <= 0)
    return lcm_error_invalid(error, "prompt encoder: batch must be positive, got %d", batch);
  if (encoder->family == LCM_FAMILY_SD15) {
    const LcmTextEncoderOutputs outputs = {
        .skip = clip_skip, .final_layer_norm = TRUE, .hidden = context};
    return lcm_text_encoder_run(encoder->encoder, ids, batch, &outputs, error);
  }
  if (!ids_2) return lcm_error_invalid(error, "an SDXL prompt needs the second tokenizer's ids");
  const int width_1 = lcm_text_encoder_hidden_size(encoder->encoder);
  const int width_2 = lcm_text_encoder_hidden_size(encoder->encoder_2);
  const size_t rows = (size_t)batch * LCM_CLIP_TOKENS;
  float *hidden_1 = g_try_new(float, rows *width_1);
  float *hidden_2 = g_try_new(float, rows *width_2);
  gboolean ok = hidden_1 && hidden_2;
  if (!ok) g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "prompt encoder: out of memory");
  const LcmTextEncoderOutputs outputs_1 = {.skip = 1 + clip_skip, .hidden = hidden_1};
  const LcmTextEncoderOutputs outputs_2 = {
      .skip = 1 + clip_skip, .hidden = hidden_2, .pooled = pooled};
  ok = ok && lcm_text_encoder_run(encoder->encoder, ids, batch, &outputs_1, error) &&
       lcm_text_encoder_run(encoder->encoder_2, ids_2, batch, &outputs_2, error);
  for (size_t r = 0; ok && r < rows; r++) {
    float *row = context + r * (width_1 + width_2);
    memcpy(row, hidden_1 + r * width_1, sizeof(float) * width_1);
    memcpy(row + width_1, hidden_2 + r * width_2, sizeof(float) * width_2);
  }
  g_free(hidden_1);
  g_free(hidden_2);
  return ok;
}

gboolean lcm_prompt_encoder_encode(LcmPromptEncoder *encoder, const char *prompt,
                                   const char *prompt_2, int clip_skip, float *context,
                                   float *pooled, GError **error) {
  int32_t ids[LCM_CLIP_TOKENS], ids_2[LCM_CLIP_TOKENS];
  lcm_tokenizer_encode(encoder->tokenizer, prompt, ids);
  if (encoder->tokenizer_2)
    lcm_tokenizer_encode(encoder->tokenizer_2, prompt_2 ? prompt_2 : prompt, ids_2);
  return lcm_prompt_encoder_encode_ids(encoder, ids, encoder->tokenizer_2 ? ids_2 : NULL, 1,
                                       clip_skip, context, pooled, error);
}

gboolean lcm_prompt_encoder_negative_is_zero(const LcmPromptEncoder *encoder,
                                             const char *negative_prompt) {
  return !negative_prompt && encoder->force_zeros_for_empty_prompt;
}

gboolean lcm_prompt_encoder_encode_cfg(LcmPromptEncoder *encoder, const char *prompt,
                                       const char *prompt_2, const char *negative_prompt,
                                       const char *negative_prompt_2, int clip_skip, float *context,
                                       float *pooled, GError **error) {
  const size_t context_size = (size_t)LCM_CLIP_TOKENS * lcm_prompt_encoder_context_dim(encoder);
  const int pooled_size = lcm_prompt_encoder_pooled_dim(encoder);
  float *negative_pooled = pooled_size ? pooled : NULL;
  if (!lcm_prompt_encoder_encode(encoder, prompt, prompt_2, clip_skip, context + context_size,
                                 pooled_size ? pooled + pooled_size : NULL, error))
    return FALSE;
  if (lcm_prompt_encoder_negative_is_zero(encoder, negative_prompt)) {
    memset(context, 0, sizeof(float) * context_size);
    if (negative_pooled) memset(negative_pooled, 0, sizeof(float) * pooled_size);
    return TRUE;
  }
  const char *negative = negative_prompt ? negative_prompt : "";
  return lcm_prompt_encoder_encode(encoder, negative,
                                   negative_prompt_2 ? negative_prompt_2 : negative, 0, context,
                                   negative_pooled, error);
}
