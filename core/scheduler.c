/* diffusers' LCMScheduler (0.27): the training noise schedule, LCM's
 * skipping-step timestep selection and the consistency step with its
 * boundary-condition scalings. Arithmetic follows the reference's float32
 * tensors. */
#include "lcm.h"

#include <json-glib/json-glib.h>
#include <math.h>

#define SIGMA_DATA 0.5f

typedef enum { PREDICT_EPSILON, PREDICT_SAMPLE, PREDICT_V } Prediction;

struct LcmScheduler {
  int train_steps;
  int original_inference_steps;
  float timestep_scaling;
  Prediction prediction;
  float final_alpha_cumprod;
  float *betas;
  float *alphas_cumprod;
};

typedef struct {
  int train_steps, original_inference_steps;
  double beta_start, beta_end, timestep_scaling;
  char *beta_schedule, *prediction_type;
  gboolean set_alpha_to_one;
} SchedulerConfig;

/* Typed members of a scheduler config: absent or null keeps `*out`; another
 * type is an error naming the key. `path` names the source in messages. */
static gboolean member_value(JsonObject *o, const char *key, GType type, const char *expected,
                             const char *path, JsonNode **out, GError **error) {
  JsonNode *node = json_object_get_member(o, key);
  *out = NULL;
  if (!node || JSON_NODE_HOLDS_NULL(node)) return TRUE;
  GType found = JSON_NODE_HOLDS_VALUE(node) ? json_node_get_value_type(node) : G_TYPE_INVALID;
  if (found == type || (type == G_TYPE_DOUBLE && found == G_TYPE_INT64)) {
    *out = node;
    return TRUE;
  }
  g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: '%s' must be %s", path, key, expected);
  return FALSE;
}

/* An integer in [min, max]. */
static gboolean member_int(JsonObject *o, const char *key, int min, int max, const char *path,
                           int *out, GError **error) {
  JsonNode *node;
  if (!member_value(o, key, G_TYPE_INT64, "an integer", path, &node, error)) return FALSE;
  if (!node) return TRUE;
  gint64 value = json_node_get_int(node);
  if (value < min || value > max) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: '%s' is %" G_GINT64_FORMAT ", out of range (%d to %d)", path, key, value, min,
                max);
    return FALSE;
  }
  *out = (int)value;
  return TRUE;
}

/* A number in [min, max]. */
static gboolean member_double(JsonObject *o, const char *key, double min, double max,
                              const char *path, double *out, GError **error) {
  JsonNode *node;
  if (!member_value(o, key, G_TYPE_DOUBLE, "a number", path, &node, error)) return FALSE;
  if (!node) return TRUE;
  double value = json_node_get_double(node);
  if (!(value >= min && value <= max)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: '%s' is %g, out of range (%g to %g)", path,
                key, value, min, max);
    return FALSE;
  }
  *out = value;
  return TRUE;
}

static gboolean member_bool(JsonObject *o, const char *key, const char *path, gboolean *out,
                            GError **error) {
  JsonNode *node;
  if (!member_value(o, key, G_TYPE_BOOLEAN, "true or false", path, &node, error)) return FALSE;
  if (node) *out = json_node_get_boolean(node);
  return TRUE;
}

static gboolean member_string(JsonObject *o, const char *key, const char *path, char **out,
                              GError **error) {
  JsonNode *node;
  if (!member_value(o, key, G_TYPE_STRING, "a string", path, &node, error)) return FALSE;
  if (node) {
    g_free(*out);
    *out = g_strdup(json_node_get_string(node));
  }
  return TRUE;
}

/* Training schedules longer than this are not in use; the tables are this long. */
#define MAX_TRAIN_STEPS 100000

static gboolean read_config(const char *json, const char *path, SchedulerConfig *cfg,
                            GError **error) {
  JsonParser *parser = json_parser_new();
  GError *json_error = NULL;
  gboolean ok = json_parser_load_from_data(parser, json, -1, &json_error);
  JsonNode *root = ok ? json_parser_get_root(parser) : NULL;
  if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT, "%s: not a JSON object%s%s", path,
                json_error ? ": " : "", json_error ? json_error->message : "");
    g_clear_error(&json_error);
    g_object_unref(parser);
    return FALSE;
  }
  JsonObject *o = json_node_get_object(root);
  ok = member_int(o, "num_train_timesteps", 2, MAX_TRAIN_STEPS, path, &cfg->train_steps, error) &&
       member_int(o, "original_inference_steps", 1, MAX_TRAIN_STEPS, path,
                  &cfg->original_inference_steps, error) &&
       member_double(o, "beta_start", 0, 1, path, &cfg->beta_start, error) &&
       member_double(o, "beta_end", 0, 1, path, &cfg->beta_end, error) &&
       member_double(o, "timestep_scaling", 0, 1e6, path, &cfg->timestep_scaling, error) &&
       member_bool(o, "set_alpha_to_one", path, &cfg->set_alpha_to_one, error) &&
       member_string(o, "beta_schedule", path, &cfg->beta_schedule, error) &&
       member_string(o, "prediction_type", path, &cfg->prediction_type, error);
  g_object_unref(parser);
  if (ok && cfg->original_inference_steps > cfg->train_steps) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: original_inference_steps %d exceeds num_train_timesteps %d", path,
                cfg->original_inference_steps, cfg->train_steps);
    ok = FALSE;
  }
  return ok;
}

/* torch.linspace in float32: the first half counts up from start, the second
 * half down from end, so both ends are exact. */
static float linspace_f32(float start, float end, int steps, int i) {
  float step = (end - start) / (float)(steps - 1);
  return i < steps / 2 ? start + step * (float)i : end - step * (float)(steps - 1 - i);
}

LcmScheduler *lcm_scheduler_new(const char *config_json, GError **error) {
  char *text = NULL;
  if (config_json && !g_file_get_contents(config_json, &text, NULL, error)) {
    g_prefix_error(error, "%s: ", config_json);
    return NULL;
  }
  LcmScheduler *s = lcm_scheduler_new_from_json(text, config_json, error);
  g_free(text);
  return s;
}

LcmScheduler *lcm_scheduler_new_from_json(const char *json, const char *config_json,
                                          GError **error) {
  SchedulerConfig cfg = {
      1000, 50, 0.00085, 0.012, 10.0, g_strdup("scaled_linear"), g_strdup("epsilon"), TRUE};
  LcmScheduler *s = NULL;
  if (json && !read_config(json, config_json, &cfg, error)) goto out;
  Prediction prediction;
  if (g_strcmp0(cfg.prediction_type, "epsilon") == 0) {
    prediction = PREDICT_EPSILON;
  } else if (g_strcmp0(cfg.prediction_type, "sample") == 0) {
    prediction = PREDICT_SAMPLE;
  } else if (g_strcmp0(cfg.prediction_type, "v_prediction") == 0) {
    prediction = PREDICT_V;
  } else {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: prediction_type '%s' is not supported (epsilon, sample, v_prediction)",
                config_json, cfg.prediction_type);
    goto out;
  }
  gboolean scaled = g_strcmp0(cfg.beta_schedule, "scaled_linear") == 0;
  if (!scaled && g_strcmp0(cfg.beta_schedule, "linear") != 0) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                "%s: beta_schedule '%s' is not supported (scaled_linear, linear)", config_json,
                cfg.beta_schedule);
    goto out;
  }
  s = g_new0(LcmScheduler, 1);
  s->train_steps = cfg.train_steps;
  s->original_inference_steps = cfg.original_inference_steps;
  s->timestep_scaling = (float)cfg.timestep_scaling;
  s->prediction = prediction;
  s->betas = g_new(float, cfg.train_steps);
  s->alphas_cumprod = g_new(float, cfg.train_steps);
  float start = (float)(scaled ? sqrt(cfg.beta_start) : cfg.beta_start);
  float end = (float)(scaled ? sqrt(cfg.beta_end) : cfg.beta_end);
  float product = 1.0f;
  for (int i = 0; i < cfg.train_steps; i++) {
    float b = linspace_f32(start, end, cfg.train_steps, i);
    s->betas[i] = scaled ? b * b : b;
    product *= 1.0f - s->betas[i];
    s->alphas_cumprod[i] = product;
  }
  s->final_alpha_cumprod = cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
out:
  g_free(cfg.beta_schedule);
  g_free(cfg.prediction_type);
  return s;
}

void lcm_scheduler_free(LcmScheduler *scheduler) {
  if (!scheduler) return;
  g_free(scheduler->betas);
  g_free(scheduler->alphas_cumprod);
  g_free(scheduler);
}

int lcm_scheduler_train_steps(const LcmScheduler *scheduler) {
  return scheduler->train_steps;
}

int lcm_scheduler_timesteps(const LcmScheduler *s, int steps, float strength, int *timesteps,
                            GError **error) {
  int k = s->train_steps / s->original_inference_steps;
  int origin_len = (int)(s->original_inference_steps * strength);
  if (steps < 1 || steps > LCM_MAX_STEPS || !(strength > 0.0f && strength <= 1.0f) ||
      origin_len / steps < 1) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "%d steps at strength %.2f: LCM needs 1-%d steps and at most "
                "strength x %d (= %d) of them",
                steps, strength, LCM_MAX_STEPS, s->original_inference_steps, origin_len);
    return 0;
  }
  /* origin = [1..origin_len] * k - 1, reversed; pick floor(linspace(0, len,
   * steps, endpoint=False)) of it (numpy's float64 linspace). */
  double spacing = (double)origin_len / steps;
  for (int i = 0; i < steps; i++) {
    int index = (int)floor((double)i * spacing);
    timesteps[i] = (origin_len - index) * k - 1;
  }
  return steps;
}

float lcm_scheduler_alpha_cumprod(const LcmScheduler *s, int timestep) {
  return timestep >= 0 ? s->alphas_cumprod[CLAMP(timestep, 0, s->train_steps - 1)]
                       : s->final_alpha_cumprod;
}

float lcm_scheduler_beta(const LcmScheduler *s, int timestep) {
  return s->betas[CLAMP(timestep, 0, s->train_steps - 1)];
}

void lcm_scheduler_boundary(const LcmScheduler *s, int timestep, float *c_skip, float *c_out) {
  float scaled = (float)timestep * s->timestep_scaling;
  float denom = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
  *c_skip = SIGMA_DATA * SIGMA_DATA / denom;
  *c_out = scaled / sqrtf(denom);
}

void lcm_scheduler_step(const LcmScheduler *s, const float *model_output, int timestep,
                        int prev_timestep, const float *sample, const float *noise, size_t n,
                        float *denoised, float *prev_sample) {
  float alpha = lcm_scheduler_alpha_cumprod(s, timestep);
  float alpha_prev = lcm_scheduler_alpha_cumprod(s, prev_timestep);
  float sqrt_alpha = sqrtf(alpha), sqrt_beta = sqrtf(1.0f - alpha);
  float sqrt_alpha_prev = sqrtf(alpha_prev), sqrt_beta_prev = sqrtf(1.0f - alpha_prev);
  float c_skip, c_out;
  lcm_scheduler_boundary(s, timestep, &c_skip, &c_out);
  for (size_t i = 0; i < n; i++) {
    float x0;
    switch (s->prediction) {
    case PREDICT_SAMPLE:
      x0 = model_output[i];
      break;
    case PREDICT_V:
      x0 = sqrt_alpha * sample[i] - sqrt_beta * model_output[i];
      break;
    default:
      x0 = (sample[i] - sqrt_beta * model_output[i]) / sqrt_alpha;
      break;
    }
    float d = c_out * x0 + c_skip * sample[i];
    denoised[i] = d;
    prev_sample[i] = noise ? sqrt_alpha_prev * d + sqrt_beta_prev * noise[i] : d;
  }
}

void lcm_scheduler_add_noise(const LcmScheduler *s, const float *original, const float *noise,
                             int timestep, size_t n, float *out) {
  float alpha = lcm_scheduler_alpha_cumprod(s, timestep);
  float sqrt_alpha = sqrtf(alpha), sqrt_beta = sqrtf(1.0f - alpha);
  for (size_t i = 0; i < n; i++) out[i] = sqrt_alpha * original[i] + sqrt_beta * noise[i];
}
