/* The CLIP text encoder (transformers CLIPTextModel and
 * CLIPTextModelWithProjection): token + position embeddings, pre-LN
 * transformer layers with causal self-attention, a final layer norm, and for
 * the projection model (SDXL's OpenCLIP ViT-bigG) a bias-free
 * text_projection of the pooled (EOS) token. Outputs are the hidden state
 * after any layer (clip skip, SDXL's penultimate layer), with or without the
 * final layer norm, and the pooled vector. */
#include "model.h"
#include "ops-internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  Norm *norm1, *norm2;
  Linear *qkv; /* q_proj, k_proj, v_proj side by side */
  Linear *out_proj, *fc1, *fc2;
} ClipLayer;

struct LcmTextEncoder {
  Ops *ops;
  ClipConfig config;
  Embedding *token_embedding; /* [vocab, hidden] */
  float *position_embedding;  /* [max_positions, hidden] */
  ClipLayer *layers;
  Norm *final_norm;
  Linear *text_projection; /* CLIPTextModelWithProjection only */
  /* fp32 whatever ops computes in: the projection of the pooled token is
   * one row per prompt, and SDXL's UNet conditions on it directly. */
  Ops *projection_ops;
  int projection_dim; /* its width; 0 without one */
};

static void clip_layer_clear(ClipLayer *layer) {
  norm_free(layer->norm1);
  norm_free(layer->norm2);
  linear_free(layer->qkv);
  linear_free(layer->out_proj);
  linear_free(layer->fc1);
  linear_free(layer->fc2);
}

void lcm_text_encoder_free(LcmTextEncoder *encoder) {
  if (!encoder) return;
  if (encoder->layers)
    for (int i = 0; i < encoder->config.num_hidden_layers; i++)
      clip_layer_clear(&encoder->layers[i]);
  g_free(encoder->layers);
  norm_free(encoder->final_norm);
  linear_free(encoder->text_projection);
  embedding_free(encoder->token_embedding);
  g_free(encoder->position_embedding);
  ops_free(encoder->projection_ops);
  ops_free(encoder->ops);
  g_free(encoder);
}

static gboolean clip_layer_load(Ops *ops, const Weights *w, const ClipConfig *cfg, int index,
                                ClipLayer *layer, GError **error) {
  const int hidden = cfg->hidden_size;
  char *base = g_strdup_printf("text_model.encoder.layers.%d", index);
  char *q = g_strdup_printf("%s.self_attn.q_proj", base);
  char *k = g_strdup_printf("%s.self_attn.k_proj", base);
  char *v = g_strdup_printf("%s.self_attn.v_proj", base);
  char *out = g_strdup_printf("%s.self_attn.out_proj", base);
  char *norm1 = g_strdup_printf("%s.layer_norm1", base);
  char *norm2 = g_strdup_printf("%s.layer_norm2", base);
  char *fc1 = g_strdup_printf("%s.mlp.fc1", base);
  char *fc2 = g_strdup_printf("%s.mlp.fc2", base);
  const char *const qkv[3] = {q, k, v};
  gboolean ok =
      (layer->norm1 = norm_load(ops, w, norm1, hidden, error)) &&
      (layer->qkv = linear_load_fused(ops, w, qkv, 3, hidden, hidden, TRUE, error)) &&
      (layer->out_proj = linear_load(ops, w, out, hidden, hidden, TRUE, error)) &&
      (layer->norm2 = norm_load(ops, w, norm2, hidden, error)) &&
      (layer->fc1 = linear_load(ops, w, fc1, hidden, cfg->intermediate_size, TRUE, error)) &&
      (layer->fc2 = linear_load(ops, w, fc2, cfg->intermediate_size, hidden, TRUE, error));
  g_free(base);
  g_free(q);
  g_free(k);
  g_free(v);
  g_free(out);
  g_free(norm1);
  g_free(norm2);
  g_free(fc1);
  g_free(fc2);
  return ok;
}

static gboolean check_config(const ClipConfig *cfg, GError **error) {
  if (cfg->hidden_size <= 0 || cfg->num_attention_heads <= 0 ||
      cfg->hidden_size % cfg->num_attention_heads != 0 || cfg->num_hidden_layers <= 0 ||
      cfg->intermediate_size <= 0 || cfg->vocab_size <= 0 ||
      cfg->max_position_embeddings < LCM_CLIP_TOKENS) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "text encoder: unusable configuration (hidden %d, %d heads, %d layers, "
                "intermediate %d, vocabulary %d, %d positions)",
                cfg->hidden_size, cfg->num_attention_heads, cfg->num_hidden_layers,
                cfg->intermediate_size, cfg->vocab_size, cfg->max_position_embeddings);
    return FALSE;
  }
  return TRUE;
}

/* CLIPTextModelWithProjection's text_projection [projection_dim, hidden]. */
static gboolean load_text_projection(LcmTextEncoder *enc, const Weights *w, GError **error) {
  const char *name = "text_projection.weight";
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  if (!weights_shape(w, name, &ndims, shape)) return TRUE;
  if (ndims != 2 || shape[0] <= 0 || shape[0] > G_MAXINT) {
    char *shape_text = weights_shape_string(ndims, shape);
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "%s: text encoder tensor '%s' has shape %s, expected [projection, %d]",
                weights_path(w), name, shape_text, enc->config.hidden_size);
    g_free(shape_text);
    return FALSE;
  }
  enc->projection_dim = (int)shape[0];
  if (!(enc->projection_ops = ops_new(LCM_PRECISION_FP32, error))) return FALSE;
  ops_use_weight_cache(enc->projection_ops, "text-projection", w);
  enc->text_projection = linear_load(enc->projection_ops, w, "text_projection",
                                     enc->config.hidden_size, enc->projection_dim, FALSE, error);
  return enc->text_projection != NULL;
}

static LcmTextEncoder *text_encoder_load(LcmModel *model, Component component,
                                         LcmPrecision precision, GError **error) {
  LcmTextEncoder *enc = g_new0(LcmTextEncoder, 1);
  Weights *w = NULL;
  gboolean ok = model_clip_config(model, component, &enc->config, error) &&
                check_config(&enc->config, error) && (w = model_weights(model, component, error)) &&
                (enc->ops = ops_new(precision, error));
  const ClipConfig *cfg = &enc->config;
  if (ok) ops_use_weight_cache(enc->ops, "text-encoder", w);
  /* In the compute dtype: half the size in bf16; cached, it costs nothing. */
  ok = ok &&
       (enc->token_embedding = embedding_load(enc->ops, w, "text_model.embeddings.token_embedding",
                                              cfg->vocab_size, cfg->hidden_size, error)) != NULL;
  if (ok) {
    const int64_t shape[2] = {cfg->max_position_embeddings, cfg->hidden_size};
    enc->position_embedding =
        weights_get(w, "text_model.embeddings.position_embedding.weight", 2, shape, error);
    ok = enc->position_embedding != NULL;
  }
  if (ok) enc->layers = g_new0(ClipLayer, cfg->num_hidden_layers);
  for (int i = 0; ok && i < cfg->num_hidden_layers; i++)
    ok = clip_layer_load(enc->ops, w, cfg, i, &enc->layers[i], error);
  if (ok) {
    enc->final_norm =
        norm_load(enc->ops, w, "text_model.final_layer_norm", cfg->hidden_size, error);
    ok = enc->final_norm != NULL && load_text_projection(enc, w, error);
  }
  if (!ok) {
    lcm_text_encoder_free(enc);
    return NULL;
  }
  ops_load_done(enc->ops);
  if (enc->projection_ops) ops_load_done(enc->projection_ops);
  return enc;
}

LcmTextEncoder *lcm_text_encoder_load(LcmModel *model, LcmPrecision precision, GError **error) {
  return text_encoder_load(model, COMPONENT_TEXT_ENCODER, precision, error);
}

LcmTextEncoder *lcm_text_encoder_load_2(LcmModel *model, LcmPrecision precision, GError **error) {
  return text_encoder_load(model, COMPONENT_TEXT_ENCODER_2, precision, error);
}

int lcm_text_encoder_hidden_size(const LcmTextEncoder *encoder) {
  return encoder->config.hidden_size;
}

int lcm_text_encoder_layers(const LcmTextEncoder *encoder) {
  return encoder->config.num_hidden_layers;
}

int lcm_text_encoder_pooled_size(const LcmTextEncoder *encoder) {
  return encoder->text_projection ? encoder->projection_dim : encoder->config.hidden_size;
}

/* One pre-LN layer; x stays the caller's. */
static Tensor *clip_layer_forward(LcmTextEncoder *enc, const ClipLayer *layer, const Tensor *x,
                                  GError **error) {
  Ops *ops = enc->ops;
  const ClipConfig *cfg = &enc->config;
  const Activation act = cfg->quick_gelu ? ACT_QUICK_GELU : ACT_GELU_ERF;
  Tensor *normed = layer_norm(ops, layer->norm1, x, cfg->layer_norm_eps, error);
  Tensor *qkv = normed ? linear(ops, layer->qkv, normed, NULL, ACT_NONE, error) : NULL;
  tensor_free(normed);
  Tensor *mixed = qkv ? attention_fused_qkv(ops, qkv, cfg->num_attention_heads, TRUE, error) : NULL;
  tensor_free(qkv);
  Tensor *h = mixed ? linear(ops, layer->out_proj, mixed, x, ACT_NONE, error) : NULL;
  tensor_free(mixed);
  normed = h ? layer_norm(ops, layer->norm2, h, cfg->layer_norm_eps, error) : NULL;
  Tensor *inner = normed ? linear(ops, layer->fc1, normed, NULL, act, error) : NULL;
  tensor_free(normed);
  Tensor *out = inner ? linear(ops, layer->fc2, inner, h, ACT_NONE, error) : NULL;
  tensor_free(inner);
  tensor_free(h);
  return out;
}

/* token_embedding[id] + position_embedding[t] for every token. */
static Tensor *embed(LcmTextEncoder *enc, const int32_t *ids, int batch, GError **error) {
  const int hidden = enc->config.hidden_size;
  const size_t rows = (size_t)batch * LCM_CLIP_TOKENS;
  for (size_t r = 0; r < rows; r++)
    if (ids[r] < 0 || ids[r] >= enc->config.vocab_size) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                  "text encoder: token id %d (sequence %zu, position %zu) is outside the "
                  "vocabulary of %d",
                  ids[r], r / LCM_CLIP_TOKENS, r % LCM_CLIP_TOKENS, enc->config.vocab_size);
      return NULL;
    }
  float *x = g_try_new(float, rows *hidden);
  if (!x) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "text encoder: out of memory");
    return NULL;
  }
  for (size_t r = 0; r < rows; r++) {
    const float *position = enc->position_embedding + (r % LCM_CLIP_TOKENS) * hidden;
    embedding_row(enc->token_embedding, ids[r], x + r * hidden);
    for (int j = 0; j < hidden; j++) x[r * hidden + j] += position[j];
  }
  Tensor *t = tensor_from_rows(enc->ops, x, batch, LCM_CLIP_TOKENS, hidden);
  g_free(x);
  if (!t) g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "text encoder: out of memory");
  return t;
}

/* x as fp32 rows, through the final layer norm when `normed`. */
static gboolean hidden_to_rows(LcmTextEncoder *enc, const Tensor *x, gboolean normed, float *rows,
                               GError **error) {
  Tensor *out =
      normed ? layer_norm(enc->ops, enc->final_norm, x, enc->config.layer_norm_eps, error) : NULL;
  if (normed && !out) return FALSE;
  tensor_to_rows(out ? out : x, rows);
  tensor_free(out);
  return TRUE;
}

/* The position transformers pools at: argmax(ids) for the legacy
 * eos_token_id 2 (the first EOS unless the text held "<|endoftext|>"), else
 * the first eos_token_id (0 when there is none, as argmax of all-false). */
static int pooled_position(const ClipConfig *cfg, const int32_t *ids) {
  int best = 0;
  for (int t = 0; t < LCM_CLIP_TOKENS; t++) {
    if (cfg->eos_token_id == 2 ? ids[t] > ids[best] : ids[t] == cfg->eos_token_id) {
      best = t;
      if (cfg->eos_token_id != 2) break;
    }
  }
  return best;
}

/* final_layer_norm(x) at each sequence's pooled position, projected when
 * the model has a text_projection: batch x pooled_size into `pooled`. */
static gboolean pool(LcmTextEncoder *enc, const Tensor *x, const int32_t *ids, int batch,
                     float *pooled, GError **error) {
  const int hidden = enc->config.hidden_size;
  float *rows = g_try_new(float, (size_t)batch *LCM_CLIP_TOKENS *hidden);
  float *picked = g_try_new(float, (size_t)batch *hidden);
  gboolean ok = rows && picked;
  if (!ok) g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "text encoder: out of memory");
  ok = ok && hidden_to_rows(enc, x, TRUE, rows, error);
  for (int b = 0; ok && b < batch; b++) {
    const int t = pooled_position(&enc->config, ids + (size_t)b * LCM_CLIP_TOKENS);
    memcpy(picked + (size_t)b * hidden, rows + ((size_t)b * LCM_CLIP_TOKENS + t) * hidden,
           sizeof(float) * hidden);
  }
  g_free(rows);
  if (ok && !enc->text_projection) memcpy(pooled, picked, sizeof(float) * batch * hidden);
  if (ok && enc->text_projection) {
    Tensor *in = tensor_from_rows(enc->projection_ops, picked, batch, 1, hidden);
    Tensor *projected =
        in ? linear(enc->projection_ops, enc->text_projection, in, NULL, ACT_NONE, error) : NULL;
    if (!in) g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "text encoder: out of memory");
    if (projected) tensor_to_rows(projected, pooled);
    ok = projected != NULL;
    tensor_free(in);
    tensor_free(projected);
  }
  g_free(picked);
  return ok;
}

gboolean lcm_text_encoder_run(LcmTextEncoder *encoder, const int32_t *ids, int batch,
                              const LcmTextEncoderOutputs *outputs, GError **error) {
  const int layers = encoder->config.num_hidden_layers;
  if (batch <= 0)
    return lcm_error_invalid(error, "text encoder: batch must be positive, got %d", batch);
  if (outputs->skip < 0 || outputs->skip > layers)
    return lcm_error_invalid(error, "text encoder: cannot skip %d layers; it has %d (skip 0 to %d)",
                             outputs->skip, layers, layers);
  /* hidden_states[k] is the output of k layers, hidden_states[0] the
   * embeddings; the pooled vector needs them all */
  const int wanted = layers - outputs->skip;
  const int last = outputs->pooled ? layers : wanted;
  Tensor *x = embed(encoder, ids, batch, error);
  gboolean ok = x != NULL;
  for (int k = 0; ok; k++) {
    if (k == wanted && outputs->hidden)
      ok = hidden_to_rows(encoder, x, outputs->final_layer_norm, outputs->hidden, error);
    if (!ok || k == last) break;
    Tensor *next = clip_layer_forward(encoder, &encoder->layers[k], x, error);
    tensor_free(x);
    x = next;
    ok = x != NULL;
  }
  ok = ok && (!outputs->pooled || pool(encoder, x, ids, batch, outputs->pooled, error));
  tensor_free(x);
  if (ok) ops_weight_cache_store(encoder->ops);
  if (ok && encoder->projection_ops) ops_weight_cache_store(encoder->projection_ops);
  return ok;
}

gboolean lcm_text_encoder_encode(LcmTextEncoder *encoder, const int32_t *ids, int batch,
                                 float *last_hidden_state, GError **error) {
  const LcmTextEncoderOutputs outputs = {
      .skip = 0, .final_layer_norm = TRUE, .hidden = last_hidden_state};
  return lcm_text_encoder_run(encoder, ids, batch, &outputs, error);
}
