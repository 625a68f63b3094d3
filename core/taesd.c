/* TAESD: diffusers AutoencoderTiny (madebyollin's tiny autoencoder), a small
 * approximation of the SD VAE, fast enough to decode a preview after every
 * step.
 *
 * Both networks are plain stacks of 3x3 convolutions, residual blocks and
 * x2 resampling at a constant width (64). Weights come from a diffusers
 * folder (decoder.layers.k.* / encoder.layers.k.*) or from madebyollin's own
 * taesd_decoder / taesd_encoder files (taesdxl_* for TAESDXL, the same
 * network with SDXL's weights), whose Sequential indices are the diffusers
 * ones (+1 in the decoder, which starts with a weightless Clamp).
 * Activations are NHWC; each stage frees its input as soon as it is used.
 */
#include "lcm.h"
#include "ops.h"
#include "weights.h"

#include <math.h>
#include <string.h>

/* The layer stacks of diffusers' DecoderTiny.layers and EncoderTiny.layers,
 * one character per module, in module order (the index of a character is the
 * module's diffusers index):
 *   'i' conv 3x3 from the network's input channels, with bias
 *   'o' conv 3x3 to the network's output channels, with bias
 *   'c' conv 3x3 without bias
 *   's' conv 3x3, stride 2, without bias
 *   'r' ReLU (fused into the conv before it)
 *   'b' block: relu(conv.4(relu(conv.2(relu(conv.0(x))))) + x)
 *   'u' nearest x2 upsampling; always followed by 'c', the two run as one
 *       upsample_conv layer (four 2x2 convs on the low-resolution input) */
static const char DECODER_LAYERS[] = "irbbbucbbbucbbbucbo";
static const char ENCODER_LAYERS[] = "ibsbbbsbbbsbbbo";

#define TAESD_MAX_LAYERS 32
G_STATIC_ASSERT(sizeof(DECODER_LAYERS) <= TAESD_MAX_LAYERS &&
                sizeof(ENCODER_LAYERS) <= TAESD_MAX_LAYERS);
/* Bound on a weight's channel counts, far above TAESD's 64 and 4. */
#define TAESD_MAX_CHANNELS 4096
#define TAESD_IMAGE_CHANNELS 3
/* The decoder's input is soft-clamped to (-3, 3): tanh(z / 3) * 3. */
#define TAESD_LATENT_MAGNITUDE 3.0f
/* Latent-pixel limit per side (image side 8x that), as for the VAE. */
#define TAESD_MAX_LATENT_SIDE 2048

typedef enum { NET_DECODER, NET_ENCODER, N_NETS } NetKind;

typedef struct {
  char kind;              /* a character of the layer string */
  Conv2d *conv[3];        /* convs: conv[0]; blocks: conv.0, conv.2, conv.4 */
  UpsampleConv *upsample; /* 'u': the upsampling and the 'c' conv after it */
  Activation act;         /* of a conv: RELU when a ReLU module follows it */
} TaesdLayer;

typedef struct {
  int n_layers; /* 0 when the network is not loaded */
  TaesdLayer layers[TAESD_MAX_LAYERS];
  int in_ch, out_ch;
  char *source; /* the weight file it came from, for messages */
} TaesdNet;

struct LcmTaesd {
  Ops *ops;
  char *path; /* as given to lcm_taesd_load */
  TaesdNet nets[N_NETS];
};

static const char *const NET_NAMES[N_NETS] = {"decoder", "encoder"};

/* ---- Key layouts --------------------------------------------------------------- */

/* How a file names layer k of a network: PREFIX(k + index_offset). */
typedef struct {
  const char *prefix;
  int index_offset;
} KeyLayout;

/* diffusers first; then madebyollin's files, where the decoder's conv(4, 64)
 * is module 1 and the encoder's conv(3, 64) module 0. A file of either
 * original kind holds one network; "0.weight" tells them apart. */
static gboolean detect_layout(const Weights *w, NetKind net, KeyLayout *layout) {
  static const KeyLayout diffusers[N_NETS] = {{"decoder.layers.", 0}, {"encoder.layers.", 0}};
  static const KeyLayout original[N_NETS] = {{"", 1}, {"", 0}};
  g_autofree char *first = g_strdup_printf("%s0.weight", diffusers[net].prefix);
  if (weights_contains(w, first)) {
    *layout = diffusers[net];
    return TRUE;
  }
  gboolean is_original = net == NET_DECODER
                             ? weights_contains(w, "1.weight") && !weights_contains(w, "0.weight")
                             : weights_contains(w, "0.weight");
  if (is_original) *layout = original[net];
  return is_original;
}

static char *layer_name(const KeyLayout *layout, int index) {
  return g_strdup_printf("%s%d", layout->prefix, index + layout->index_offset);
}

/* ---- Loading ------------------------------------------------------------------- */

static void net_clear(TaesdNet *net) {
  for (int i = 0; i < net->n_layers; i++) {
    for (int j = 0; j < 3; j++) g_clear_pointer(&net->layers[i].conv[j], conv2d_free);
    g_clear_pointer(&net->layers[i].upsample, upsample_conv_free);
  }
  g_clear_pointer(&net->source, g_free);
  net->n_layers = 0;
}

/* dim `dim` of the 4-d weight of layer `index` (the network's width and its
 * input / output channels follow from its first and last convs). */
static gboolean conv_dim(const Weights *w, const KeyLayout *layout, int index, int dim, int *out,
                         GError **error) {
  g_autofree char *prefix = layer_name(layout, index);
  g_autofree char *name = g_strdup_printf("%s.weight", prefix);
  int ndims;
  int64_t shape[ST_MAX_DIMS];
  if (!weights_shape(w, name, &ndims, shape) || ndims != 4 || shape[dim] < 1 ||
      shape[dim] > TAESD_MAX_CHANNELS) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE,
                "%s: tensor '%s' is missing or is not a convolution weight", weights_path(w),
                weights_source_name(w, name) ? weights_source_name(w, name) : name);
    return FALSE;
  }
  *out = (int)shape[dim];
  return TRUE;
}

static gboolean layer_load(TaesdLayer *layer, Ops *ops, const Weights *w, const char *prefix,
                           int width, int in_ch, int out_ch, GError **error) {
  switch (layer->kind) {
  case 'u': /* prefix names the 'c' conv after the upsampling */
    return (layer->upsample =
                upsample_conv_load(ops, w, prefix, width, width, FALSE, FALSE, error)) != NULL;
  case 'b':
    for (int j = 0; j < 3; j++) {
      g_autofree char *conv = g_strdup_printf("%s.conv.%d", prefix, 2 * j);
      if (!(layer->conv[j] = conv2d_load(ops, w, conv, width, width, 3, 1, TRUE, error)))
        return FALSE;
    }
    return TRUE;
  default: {
    const char kind = layer->kind;
    layer->conv[0] =
        conv2d_load(ops, w, prefix, kind == 'i' ? in_ch : width, kind == 'o' ? out_ch : width, 3,
                    kind == 's' ? 2 : 1, kind == 'i' || kind == 'o', error);
    return layer->conv[0] != NULL;
  }
  }
}

static gboolean net_load(TaesdNet *net, NetKind kind, Ops *ops, const Weights *w,
                         const KeyLayout *layout, GError **error) {
  const char *spec = kind == NET_DECODER ? DECODER_LAYERS : ENCODER_LAYERS;
  const int last = (int)strlen(spec) - 1;
  int width;
  if (!conv_dim(w, layout, 0, 0, &width, error) || !conv_dim(w, layout, 0, 1, &net->in_ch, error) ||
      !conv_dim(w, layout, last, 0, &net->out_ch, error))
    return FALSE;
  net->source = g_strdup(weights_path(w));
  for (int k = 0; k <= last; k++) {
    if (spec[k] == 'r') {
      net->layers[net->n_layers - 1].act = ACT_RELU;
      continue;
    }
    TaesdLayer *layer = &net->layers[net->n_layers++];
    *layer = (TaesdLayer){.kind = spec[k], .act = ACT_NONE};
    if (spec[k] == 'u') k++; /* the upsampling runs with the 'c' conv after it */
    g_autofree char *prefix = layer_name(layout, k);
    if (!layer_load(layer, ops, w, prefix, width, net->in_ch, net->out_ch, error)) return FALSE;
  }
  return TRUE;
}

/* Loads every network the file holds. Tensors left over mean a layout this
 * loader does not know (a TAESD variant), which would otherwise run wrong. */
static gboolean taesd_load_file(LcmTaesd *t, const char *path, GError **error) {
  Weights *w = weights_open_file(path, error);
  if (!w) return FALSE;
  gboolean ok = TRUE, found = FALSE;
  for (int n = 0; ok && n < N_NETS; n++) {
    KeyLayout layout;
    if (!detect_layout(w, n, &layout)) continue;
    found = TRUE;
    if (t->nets[n].n_layers > 0) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                  "%s: holds a TAESD %s, but one was already loaded from %s", path, NET_NAMES[n],
                  t->nets[n].source);
      ok = FALSE;
    } else {
      ok = net_load(&t->nets[n], n, t->ops, w, &layout, error);
    }
  }
  if (ok && !found) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_FORMAT,
                "%s: not a TAESD weight file (it has no tensor 'decoder.layers.0.weight' or "
                "'encoder.layers.0.weight', as diffusers names them, nor madebyollin's "
                "'1.weight' (taesd_decoder) or '0.weight' (taesd_encoder))",
                path);
    ok = FALSE;
  }
  if (ok) {
    GPtrArray *unused = weights_unused(w);
    if (unused->len > 0) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_UNSUPPORTED,
                  "%s: %u tensor(s), such as '%s', are not part of the TAESD layout this program "
                  "runs (madebyollin/taesd: 64 channels, decoder blocks 3-3-3-1, encoder blocks "
                  "1-3-3-3)",
                  path, unused->len, (const char *)unused->pdata[0]);
      ok = FALSE;
    }
    g_ptr_array_unref(unused);
  }
  weights_free(w);
  return ok;
}

/* Appends DIR/NAME for each of the names that is a file. */
static void add_existing_files(GPtrArray *files, const char *dir, const char *const *names,
                               size_t n_names) {
  for (size_t i = 0; i < n_names; i++) {
    char *path = g_build_filename(dir, names[i], NULL);
    if (g_file_test(path, G_FILE_TEST_IS_REGULAR))
      g_ptr_array_add(files, path);
    else
      g_free(path);
  }
}

/* madebyollin's file names, by LcmModelFamily: TAESD's and TAESDXL's. */
static const char *const ORIGINAL_FILES[][2] = {
    [LCM_FAMILY_SD15] = {"taesd_decoder.safetensors", "taesd_encoder.safetensors"},
    [LCM_FAMILY_SDXL] = {"taesdxl_decoder.safetensors", "taesdxl_encoder.safetensors"},
};

/* The weight files of a TAESD folder: madebyollin's decoder and/or encoder
 * files, or else a diffusers AutoencoderTiny file. The original files come
 * first so that they can sit beside a checkpoint or in any other folder. */
static GPtrArray *folder_weight_files(const char *dir) {
  static const char *const diffusers[] = {"diffusion_pytorch_model.safetensors",
                                          "diffusion_pytorch_model.fp16.safetensors"};
  GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
  for (size_t i = 0; i < G_N_ELEMENTS(ORIGINAL_FILES) && files->len == 0; i++)
    add_existing_files(files, dir, ORIGINAL_FILES[i], G_N_ELEMENTS(ORIGINAL_FILES[i]));
  for (size_t i = 0; i < G_N_ELEMENTS(diffusers) && files->len == 0; i++)
    add_existing_files(files, dir, &diffusers[i], 1);
  return files;
}

static gboolean check_latent_channels(const LcmTaesd *t, GError **error) {
  const TaesdNet *dec = &t->nets[NET_DECODER], *enc = &t->nets[NET_ENCODER];
  const char *problem = NULL;
  if (dec->n_layers && dec->out_ch != TAESD_IMAGE_CHANNELS)
    problem = "its decoder does not output 3 (RGB) channels";
  else if (enc->n_layers && enc->in_ch != TAESD_IMAGE_CHANNELS)
    problem = "its encoder does not take 3 (RGB) channels";
  else if (dec->n_layers && enc->n_layers && dec->in_ch != enc->out_ch)
    problem = "its decoder and encoder have different latent channel counts";
  if (problem) g_set_error(error, LCM_ERROR, LCM_ERROR_SHAPE, "TAESD %s: %s", t->path, problem);
  return problem == NULL;
}

LcmTaesd *lcm_taesd_load(const char *path, LcmPrecision precision, GError **error) {
  g_return_val_if_fail(path != NULL, NULL);
  LcmTaesd *t = g_new0(LcmTaesd, 1);
  t->path = g_strdup(path);
  GPtrArray *files = NULL;
  if (g_file_test(path, G_FILE_TEST_IS_DIR)) {
    files = folder_weight_files(path);
    if (files->len == 0)
      g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
                  "%s: no TAESD weights in this folder (expected "
                  "diffusion_pytorch_model.safetensors, or taesd_decoder.safetensors and/or "
                  "taesd_encoder.safetensors, or TAESDXL's taesdxl_decoder.safetensors and/or "
                  "taesdxl_encoder.safetensors)",
                  path);
  } else {
    files = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(files, g_strdup(path));
  }
  gboolean ok = files->len > 0 && (t->ops = ops_new(precision, error));
  for (guint i = 0; ok && i < files->len; i++) ok = taesd_load_file(t, files->pdata[i], error);
  g_ptr_array_unref(files);
  if (!ok || !check_latent_channels(t, error)) {
    lcm_taesd_free(t);
    return NULL;
  }
  ops_load_done(t->ops);
  return t;
}

void lcm_taesd_free(LcmTaesd *taesd) {
  if (!taesd) return;
  for (int n = 0; n < N_NETS; n++) net_clear(&taesd->nets[n]);
  g_clear_pointer(&taesd->ops, ops_free);
  g_free(taesd->path);
  g_free(taesd);
}

gboolean lcm_taesd_has_decoder(const LcmTaesd *taesd) {
  return taesd->nets[NET_DECODER].n_layers > 0;
}

gboolean lcm_taesd_has_encoder(const LcmTaesd *taesd) {
  return taesd->nets[NET_ENCODER].n_layers > 0;
}

int lcm_taesd_latent_channels(const LcmTaesd *taesd) {
  return lcm_taesd_has_decoder(taesd) ? taesd->nets[NET_DECODER].in_ch
                                      : taesd->nets[NET_ENCODER].out_ch;
}

/* ---- Forward --------------------------------------------------------------------
 * Each stage takes ownership of x (freed on success and on failure) and
 * returns a new tensor, or NULL with error set. */

static Tensor *block_forward(Ops *ops, const TaesdLayer *block, Tensor *x, GError **error) {
  Tensor *h1 = conv2d(ops, block->conv[0], x, NULL, ACT_RELU, error);
  Tensor *h2 = h1 ? conv2d(ops, block->conv[1], h1, NULL, ACT_RELU, error) : NULL;
  tensor_free(h1);
  Tensor *out = h2 ? conv2d(ops, block->conv[2], h2, x, ACT_RELU, error) : NULL;
  tensor_free(h2);
  tensor_free(x);
  return out;
}

static Tensor *layer_forward(Ops *ops, const TaesdLayer *layer, Tensor *x, GError **error) {
  Tensor *y;
  switch (layer->kind) {
  case 'b':
    return block_forward(ops, layer, x, error);
  case 'u':
    y = upsample_conv(ops, layer->upsample, x, 2 * x->h, 2 * x->w, error);
    break;
  default:
    y = conv2d(ops, layer->conv[0], x, NULL, layer->act, error);
    break;
  }
  tensor_free(x);
  return y;
}

/* Runs a network on fp32 NCHW `input` (batch x in_ch x h x w) into `output`
 * (batch x out_ch x its size). */
static gboolean net_run(LcmTaesd *t, NetKind kind, const float *input, int batch, int h, int w,
                        float *output, GError **error) {
  const TaesdNet *net = &t->nets[kind];
  Tensor *x = tensor_from_nchw(t->ops, input, batch, net->in_ch, h, w);
  if (!x) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "TAESD %s: not enough memory for a batch of %d inputs of %dx%d", NET_NAMES[kind],
                batch, w, h);
    return FALSE;
  }
  for (int i = 0; x && i < net->n_layers; i++) x = layer_forward(t->ops, &net->layers[i], x, error);
  if (!x) return FALSE;
  tensor_to_nchw(x, output);
  tensor_free(x);
  return TRUE;
}

static gboolean check_network(const LcmTaesd *t, NetKind kind, GError **error) {
  if (t->nets[kind].n_layers > 0) return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_MISSING,
              "TAESD %s has no %s (load a folder or file that holds taesd_%s weights)", t->path,
              NET_NAMES[kind], NET_NAMES[kind]);
  return FALSE;
}

/* Sizes in image pixels; the encoder's three stride-2 convs need multiples of 8. */
static gboolean check_size(const char *what, int batch, gint64 h, gint64 w, GError **error) {
  const gint64 max_side = 8 * TAESD_MAX_LATENT_SIDE;
  if (batch >= 1 && h >= 8 && w >= 8 && h <= max_side && w <= max_side && h % 8 == 0 && w % 8 == 0)
    return TRUE;
  g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
              "TAESD %s: a batch of %d images of %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT
              " pixels is not supported (the batch must be at least 1 and each side a multiple "
              "of 8 between 8 and %" G_GINT64_FORMAT ")",
              what, batch, w, h, max_side);
  return FALSE;
}

gboolean lcm_taesd_decode(LcmTaesd *taesd, const float *latents, int batch, int h, int w,
                          float *image, GError **error) {
  g_return_val_if_fail(taesd && latents && image, FALSE);
  if (!check_network(taesd, NET_DECODER, error) ||
      !check_size("decode", batch, 8 * (gint64)h, 8 * (gint64)w, error))
    return FALSE;
  const size_t n_in = (size_t)batch * taesd->nets[NET_DECODER].in_ch * h * w;
  float *clamped = g_new(float, n_in);
  for (size_t i = 0; i < n_in; i++)
    clamped[i] = tanhf(latents[i] / TAESD_LATENT_MAGNITUDE) * TAESD_LATENT_MAGNITUDE;
  gboolean ok = net_run(taesd, NET_DECODER, clamped, batch, h, w, image, error);
  g_free(clamped);
  if (!ok) return FALSE;
  /* The network outputs [0, 1] images; callers get [-1, 1] like the VAE. */
  const size_t n_out = (size_t)batch * taesd->nets[NET_DECODER].out_ch * 64 * h * w;
  for (size_t i = 0; i < n_out; i++) image[i] = 2.0f * image[i] - 1.0f;
  return TRUE;
}

gboolean lcm_taesd_encode(LcmTaesd *taesd, const float *image, int batch, int h, int w,
                          float *latents, GError **error) {
  g_return_val_if_fail(taesd && image && latents, FALSE);
  if (!check_network(taesd, NET_ENCODER, error) || !check_size("encode", batch, h, w, error))
    return FALSE;
  /* The encoder works on [0, 1] images. */
  const size_t n_in = (size_t)batch * TAESD_IMAGE_CHANNELS * h * w;
  float *unit = g_new(float, n_in);
  for (size_t i = 0; i < n_in; i++) unit[i] = 0.5f * (image[i] + 1.0f);
  gboolean ok = net_run(taesd, NET_ENCODER, unit, batch, h, w, latents, error);
  g_free(unit);
  return ok;
}

/* ---- Finding TAESD weights --------------------------------------------------------- */

static gboolean is_taesd_folder(const char *dir) {
  GPtrArray *files = folder_weight_files(dir);
  gboolean yes = files->len > 0;
  g_ptr_array_unref(files);
  return yes;
}

/* The first TAESD folder among DIR/NAME for the names, or NULL. */
static char *find_taesd_subfolder(const char *dir, const char *const *names) {
  for (; *names; names++) {
    char *path = g_build_filename(dir, *names, NULL);
    if (is_taesd_folder(path)) return path;
    g_free(path);
  }
  return NULL;
}

/* A folder holding madebyollin's own files for the family (not just any
 * diffusers weights: beside a checkpoint those could be anything). */
static gboolean has_original_files(const char *dir, LcmModelFamily family) {
  GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
  add_existing_files(files, dir, ORIGINAL_FILES[family], G_N_ELEMENTS(ORIGINAL_FILES[family]));
  gboolean yes = files->len > 0;
  g_ptr_array_unref(files);
  return yes;
}

char *lcm_find_taesd(const char *model_path, LcmModelFamily family) {
  /* TAESD and TAESDXL have the same shapes, so only names tell them apart;
   * a model's own vae_tiny/ is its own family's. */
  static const char *const own_sd15[] = {"taesd", "vae_tiny", NULL};
  static const char *const own_sdxl[] = {"taesdxl", "vae_tiny", NULL};
  static const char *const shared_sd15[] = {"taesd", "vae_tiny", NULL};
  static const char *const shared_sdxl[] = {"taesdxl", NULL};
  gboolean xl = family == LCM_FAMILY_SDXL;
  char *found = NULL;
  if (model_path && g_file_test(model_path, G_FILE_TEST_IS_DIR)) {
    found = find_taesd_subfolder(model_path, xl ? own_sdxl : own_sd15);
  } else if (model_path && g_file_test(model_path, G_FILE_TEST_IS_REGULAR)) {
    g_autofree char *dir = g_path_get_dirname(model_path);
    found = has_original_files(dir, family) ? g_strdup(dir)
                                            : find_taesd_subfolder(dir, xl ? own_sdxl : own_sd15);
  }
  if (!found) {
    g_autofree char *models = lcm_models_dir();
    found = find_taesd_subfolder(models, xl ? shared_sdxl : shared_sd15);
  }
  return found;
}
