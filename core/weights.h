/* The weights of one network (unet, vae, text encoder), addressed by their
 * diffusers / transformers module path whatever file layout they come from. */
#pragma once

#include "safetensors.h"
#include <glib.h>

/* COMPONENT_TEXT_ENCODER_2: SDXL's second text encoder (OpenCLIP ViT-bigG). */
typedef enum {
  COMPONENT_UNET,
  COMPONENT_VAE,
  COMPONENT_TEXT_ENCODER,
  COMPONENT_TEXT_ENCODER_2,
} Component;

#define N_COMPONENTS 4

typedef struct Weights Weights;

/* A diffusers / transformers weight file: names are used as they are. */
Weights *weights_open_file(const char *path, GError **error);
/* One network of a single-file checkpoint: LDM / A1111 names are mapped onto
 * diffusers names (the file stays shared and must outlive the Weights).
 * LCM_ERROR_MISSING when the checkpoint holds no tensor of that network. */
Weights *weights_open_checkpoint(StFile *checkpoint, Component component, GError **error);
void weights_free(Weights *weights);

gboolean weights_contains(const Weights *weights, const char *name);
/* Shape of a tensor by diffusers name; FALSE if absent. */
gboolean weights_shape(const Weights *weights, const char *name, int *ndims, int64_t *shape);
/* A new fp32 copy (g_free it) of `name`, checked against the expected shape:
 * "FILE: tensor 'NAME' has shape [..], expected [..]" / "... is missing". */
float *weights_get(const Weights *weights, const char *name, int ndims, const int64_t *shape,
                   GError **error);
/* The same into `dst`, which holds weights_shape_numel(ndims, shape) floats. */
gboolean weights_read(const Weights *weights, const char *name, int ndims, const int64_t *shape,
                      float *dst, GError **error);
/* Elements of a tensor of that shape. */
size_t weights_shape_numel(int ndims, const int64_t *shape);
/* The number of values of every tensor the network holds (its parameters). */
int64_t weights_parameter_count(const Weights *weights);
const char *weights_path(const Weights *weights);
/* What weights_read checks (present, that shape), and marks `name` used,
 * without reading it: for layers that come packed from the weight cache. */
gboolean weights_check(const Weights *weights, const char *name, int ndims, const int64_t *shape,
                       GError **error);
/* Text that changes whenever the tensors weights_get returns could: the
 * file's path, size, modification time and inode, and each queued LoRA
 * update (tensor, factor, and its file's identity). NULL if a file cannot
 * be examined. g_free it. */
char *weights_identity(const Weights *weights);
/* "[a, b, c]" for messages; g_free it. */
char *weights_shape_string(int ndims, const int64_t *shape);

/* All diffusers names, sorted (free the array; the names belong to the
 * Weights). */
GPtrArray *weights_names(const Weights *weights);
/* Names never fetched with weights_get, sorted (free the array): tensors a
 * loader did not use, e.g. because the file is not the network it expects. */
GPtrArray *weights_unused(const Weights *weights);
/* The name in the file that a diffusers name comes from (itself for
 * diffusers files), or NULL if absent. */
const char *weights_source_name(const Weights *weights, const char *name);

/* ---- LoRA updates (merged by weights_get; see core/lora.c) ---------------- */

/* A low-rank update W += factor * up[rows, rank] @ down[rank, numel(W)/rows]
 * (a LoRA module, factor = scale * alpha / rank). up and down point into a
 * LoRA file that must outlive the Weights. */
typedef struct {
  const StTensor *up, *down;
  float factor;
  const StFile *file; /* the LoRA file holding up and down */
} WeightUpdate;

/* Queues an update of tensor `name`, which must exist; the caller has
 * checked the shapes. Every later weights_get of it merges its updates, in
 * the order queued, into the fp32 copy it returns. */
void weights_add_update(Weights *weights, const char *name, const WeightUpdate *update);
/* Whether weights_get has read any tensor yet (a network has loaded). */
gboolean weights_any_fetched(const Weights *weights);
/* The diffusers name of a UNet tensor given by its LDM name, e.g.
 * "model.diffusion_model.input_blocks.1.0.in_layers.2.weight" ->
 * "down_blocks.0.resnets.0.conv1.weight" for a UNet with `layers_per_block`
 * resnets per down level (g_free it); NULL when the name maps to none. */
char *weights_unet_diffusers_name(const char *ldm_name, int layers_per_block);

/* Component name for messages: "UNet", "VAE", "text encoder", "second text encoder". */
const char *component_name(Component component);
/* Keys of a single-file checkpoint that map to no network (EMA copies,
 * training buffers, or layouts this loader does not know), sorted; the names
 * belong to the file. */
GPtrArray *weights_checkpoint_unmapped(const StFile *checkpoint);
