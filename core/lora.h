/* LoRA files, kohya / sd-scripts and diffusers / peft layouts: each module
 * (a down and an up matrix, and kohya's alpha) is matched with the network
 * weight it changes and queued on the network's Weights as an update that
 * weights_get merges at load. */
#pragma once

#include "safetensors.h"
#include "weights.h"

/* The networks of a model a LoRA can change; a NULL Weights means the
 * model lacks that network, and the LoRA's modules for it are skipped. */
typedef struct {
  Weights *unet;
  int unet_layers_per_block; /* resnets per down level, for LDM-path keys */
  Weights *text_encoder;
  Weights *text_encoder_2; /* SDXL */
  gboolean sdxl;           /* the model is SDXL: LoRAs for a second text encoder fit */
} LoraTargets;

/* Opens the LoRA at `path`, matches every module with a weight of
 * `targets`, checks the shapes and queues W += scale * alpha/rank * up @ down
 * on the Weights. Either every module is queued or none (on error). Returns
 * the open file, which must outlive the Weights (st_close it after them). */
StFile *lora_attach(const char *path, float scale, const LoraTargets *targets, GError **error);
