/* The weights of one network (unet, vae, text encoder), addressed by their
 * diffusers / transformers module path whatever file layout they come from. */
#pragma once

#include "safetensors.h"
#include <glib.h>

typedef enum { COMPONENT_UNET, COMPONENT_VAE, COMPONENT_TEXT_ENCODER } Component;

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
const char *weights_path(const Weights *weights);

/* All diffusers names, sorted (free the array; the names belong to the
 * Weights). */
GPtrArray *weights_names(const Weights *weights);
/* Names never fetched with weights_get, sorted (free the array): tensors a
 * loader did not use, e.g. because the file is not the network it expects. */
GPtrArray *weights_unused(const Weights *weights);
/* The name in the file that a diffusers name comes from (itself for
 * diffusers files), or NULL if absent. */
const char *weights_source_name(const Weights *weights, const char *name);

/* Component name for messages: "UNet", "VAE", "text encoder". */
const char *component_name(Component component);
/* Keys of a single-file checkpoint that map to no network (EMA copies,
 * training buffers, or layouts this loader does not know), sorted; the names
 * belong to the file. */
GPtrArray *weights_checkpoint_unmapped(const StFile *checkpoint);
