#include "canvas.h"

#define GETTEXT_PACKAGE LCM_GETTEXT_DOMAIN
#include <glib/gi18n-lib.h>

#include <string.h>

/* Perceptual RGBA floats (in the drawable's colour space for RGB images):
 * GEGL and babl convert from and to every precision (8 to 32 bits, linear
 * or perceptual), and from and to grey, which they write as luminance. */
static const Babl *rgba_format(GimpDrawable *drawable) {
  if (gimp_drawable_is_rgb(drawable))
    return babl_format_with_space("R'G'B'A float", gimp_drawable_get_format(drawable));
  return babl_format("R'G'B'A float");
}

static gboolean refuse(GError **error, const char *message) {
  g_set_error_literal(error, LCM_ERROR, LCM_ERROR_INVALID, message);
  return FALSE;
}

/* A copy of image at width x height: exact when the size is the same. */
static LcmImage *scaled_copy(const LcmImage *image, int width, int height) {
  if (image->width != width || image->height != height)
    return lcm_image_resize(image, width, height);
  LcmImage *copy = lcm_image_new(width, height, image->channels);
  memcpy(copy->data, image->data, sizeof(float) * width * height * image->channels);
  return copy;
}

/* Layers whose pixels a run may read and change (not groups, not masks or
 * channels). */
static gboolean check_layer(GimpDrawable *drawable, GError **error) {
  if (!drawable) return refuse(error, _("No layer is selected: select the layer to work on"));
  if (!gimp_item_is_layer(GIMP_ITEM(drawable)))
    return refuse(error, _("This works on layers, not on channels or layer masks: select a "
                           "layer"));
  if (gimp_item_is_group(GIMP_ITEM(drawable)))
    return refuse(error, _("This works on a layer, not on a layer group: select a layer "
                           "inside the group"));
  return TRUE;
}

static gboolean init_txt2img(LcmCanvas *canvas, int width, int height, GError **error) {
  if (width % 8 || height % 8) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                _("The size %d × %d is not made of multiples of 8, which the model needs "
                  "(try %d × %d)"),
                width, height, MAX(8, width / 8 * 8), MAX(8, height / 8 * 8));
    return FALSE;
  }
  if (canvas->output == LCM_OUTPUT_REPLACE)
    lcm_region_for_drawable(gimp_drawable_get_width(canvas->drawable),
                            gimp_drawable_get_height(canvas->drawable), canvas->native_side,
                            &canvas->region);
  else
    canvas->region = (LcmRegion){.width = width, .height = height};
  canvas->region.work_width = width;
  canvas->region.work_height = height;
  return TRUE;
}

/* The area's RGB and alpha, and the selection over it. */
static void read_area(LcmCanvas *canvas) {
  const LcmRegion *r = &canvas->region;
  size_t pixels = (size_t)r->width * r->height;
  float *rgba = g_new(float, pixels * 4);
  GeglBuffer *buffer = gimp_drawable_get_buffer(canvas->drawable);
  gegl_buffer_get(buffer, GEGL_RECTANGLE(r->x, r->y, r->width, r->height), 1.0,
                  rgba_format(canvas->drawable), rgba, GEGL_AUTO_ROWSTRIDE, GEGL_ABYSS_NONE);
  g_object_unref(buffer);
  canvas->source = lcm_image_new(r->width, r->height, 3);
  canvas->alpha = g_new(float, pixels);
  for (size_t i = 0; i < pixels; i++) {
    memcpy(canvas->source->data + i * 3, rgba + i * 4, 3 * sizeof(float));
    canvas->alpha[i] = rgba[i * 4 + 3];
  }
  g_free(rgba);
  if (gimp_selection_is_empty(canvas->image)) return;
  /* The selection lives in image coordinates; "Y float" keeps feathering. */
  int offset_x, offset_y;
  gimp_drawable_get_offsets(canvas->drawable, &offset_x, &offset_y);
  canvas->mask = lcm_image_new(r->width, r->height, 1);
  buffer = gimp_drawable_get_buffer(GIMP_DRAWABLE(gimp_image_get_selection(canvas->image)));
  gegl_buffer_get(buffer, GEGL_RECTANGLE(r->x + offset_x, r->y + offset_y, r->width, r->height),
                  1.0, babl_format("Y float"), canvas->mask->data, GEGL_AUTO_ROWSTRIDE,
                  GEGL_ABYSS_NONE);
  g_object_unref(buffer);
}

static gboolean init_from_drawable(LcmCanvas *canvas, GError **error) {
  GimpDrawable *drawable = canvas->drawable;
  int width = gimp_drawable_get_width(drawable), height = gimp_drawable_get_height(drawable);
  if (gimp_selection_is_empty(canvas->image)) {
    if (canvas->mode == LCM_MODE_INPAINT)
      return refuse(error, _("Inpainting repaints the selection, but nothing is selected: "
                             "select the part to repaint first"));
    lcm_region_for_drawable(width, height, canvas->native_side, &canvas->region);
  } else {
    int x, y, w, h;
    if (!gimp_drawable_mask_intersect(drawable, &x, &y, &w, &h)) {
      g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                  _("The selection does not touch the layer “%s”: select a part of it"),
                  gimp_item_get_name(GIMP_ITEM(drawable)));
      return FALSE;
    }
    lcm_region_for_selection(width, height, x, y, w, h, canvas->native_side, &canvas->region);
  }
  read_area(canvas);
  return TRUE;
}

gboolean lcm_canvas_init(LcmCanvas *canvas, GimpImage *image, GimpDrawable **drawables,
                         LcmMode mode, LcmOutput output, int width, int height, int native_side,
                         GError **error) {
  *canvas = (LcmCanvas){.image = image, .mode = mode, .output = output, .native_side = native_side};
  int count = 0;
  while (drawables && drawables[count]) count++;
  if (count > 1) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                _("%d layers are selected: select only the one to work on"), count);
    return FALSE;
  }
  if (gimp_image_get_base_type(image) == GIMP_INDEXED)
    return refuse(error, _("Indexed images are not supported: convert the image to RGB or "
                           "grayscale first (Image ▸ Mode)"));
  canvas->drawable = count ? drawables[0] : NULL;
  if ((mode != LCM_MODE_TXT2IMG || output == LCM_OUTPUT_REPLACE) &&
      !check_layer(canvas->drawable, error))
    return FALSE;
  if (mode == LCM_MODE_TXT2IMG) return init_txt2img(canvas, width, height, error);
  return init_from_drawable(canvas, error);
}

void lcm_canvas_clear(LcmCanvas *canvas) {
  if (canvas->source) lcm_image_free(canvas->source);
  if (canvas->mask) lcm_image_free(canvas->mask);
  g_free(canvas->alpha);
  *canvas = (LcmCanvas){0};
}

LcmImage *lcm_canvas_work_source(const LcmCanvas *canvas) {
  if (!canvas->source) return NULL;
  return scaled_copy(canvas->source, canvas->region.work_width, canvas->region.work_height);
}

LcmImage *lcm_canvas_work_mask(const LcmCanvas *canvas) {
  if (!canvas->mask) return NULL;
  return scaled_copy(canvas->mask, canvas->region.work_width, canvas->region.work_height);
}

/* The pixels to write, RGBA: the result, with the source's alpha where the
 * whole layer was redrawn, and opaque where the model painted. On a new
 * layer a selection blends the result with the source. */
static float *compose_rgba(const LcmCanvas *canvas, LcmImage *result, GError **error) {
  gboolean blend = canvas->mask && canvas->output == LCM_OUTPUT_NEW_LAYER;
  if (blend && !lcm_image_composite(result, canvas->source, canvas->mask, error)) return NULL;
  size_t pixels = (size_t)result->width * result->height;
  float *rgba = g_new(float, pixels * 4);
  for (size_t i = 0; i < pixels; i++) {
    memcpy(rgba + i * 4, result->data + i * 3, 3 * sizeof(float));
    float alpha = 1.0f;
    if (canvas->alpha && !canvas->mask)
      alpha = canvas->alpha[i];
    else if (blend)
      alpha = canvas->alpha[i] + canvas->mask->data[i] * (1.0f - canvas->alpha[i]);
    rgba[i * 4 + 3] = alpha;
  }
  return rgba;
}

static GimpLayer *insert_new_layer(const LcmCanvas *canvas, const char *name, GError **error) {
  GimpImage *image = canvas->image;
  const LcmRegion *r = &canvas->region;
  GimpImageType type =
      gimp_image_get_base_type(image) == GIMP_GRAY ? GIMP_GRAYA_IMAGE : GIMP_RGBA_IMAGE;
  GimpLayer *layer =
      gimp_layer_new(image, name, r->width, r->height, type, 100.0, GIMP_LAYER_MODE_NORMAL);
  GimpLayer *parent = NULL;
  int position = 0, x = r->x, y = r->y;
  /* Above the source layer, over the area (txt2img: at the image's origin). */
  if (canvas->drawable && gimp_item_is_layer(GIMP_ITEM(canvas->drawable))) {
    parent = GIMP_LAYER(gimp_item_get_parent(GIMP_ITEM(canvas->drawable)));
    position = gimp_image_get_item_position(image, GIMP_ITEM(canvas->drawable));
  }
  if (canvas->mode != LCM_MODE_TXT2IMG) {
    int offset_x, offset_y;
    gimp_drawable_get_offsets(canvas->drawable, &offset_x, &offset_y);
    x += offset_x;
    y += offset_y;
  }
  if (!layer || !gimp_image_insert_layer(image, layer, parent, position)) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, _("GIMP could not add the layer: %s"),
                gimp_pdb_get_last_error(gimp_get_pdb()));
    return NULL;
  }
  gimp_layer_set_offsets(layer, x, y);
  return layer;
}

GimpLayer *lcm_canvas_apply(LcmCanvas *canvas, const LcmImage *result, const char *layer_name,
                            GError **error) {
  const LcmRegion *r = &canvas->region;
  LcmImage *pixels = scaled_copy(result, r->width, r->height);
  float *rgba = compose_rgba(canvas, pixels, error);
  lcm_image_free(pixels);
  if (!rgba) return NULL;
  GimpLayer *layer = NULL;
  gimp_image_undo_group_start(canvas->image);
  if (canvas->output == LCM_OUTPUT_NEW_LAYER) {
    layer = insert_new_layer(canvas, layer_name, error);
    if (layer) {
      GeglBuffer *buffer = gimp_drawable_get_buffer(GIMP_DRAWABLE(layer));
      gegl_buffer_set(buffer, GEGL_RECTANGLE(0, 0, r->width, r->height), 0,
                      rgba_format(GIMP_DRAWABLE(layer)), rgba, GEGL_AUTO_ROWSTRIDE);
      g_object_unref(buffer);
      gimp_drawable_update(GIMP_DRAWABLE(layer), 0, 0, r->width, r->height);
    }
  } else {
    /* GIMP merges the shadow through the selection, soft edges included. */
    GeglBuffer *shadow = gimp_drawable_get_shadow_buffer(canvas->drawable);
    gegl_buffer_set(shadow, GEGL_RECTANGLE(r->x, r->y, r->width, r->height), 0,
                    rgba_format(canvas->drawable), rgba, GEGL_AUTO_ROWSTRIDE);
    g_object_unref(shadow);
    gimp_drawable_merge_shadow(canvas->drawable, TRUE);
    gimp_drawable_update(canvas->drawable, r->x, r->y, r->width, r->height);
    layer = GIMP_LAYER(canvas->drawable);
  }
  gimp_image_undo_group_end(canvas->image);
  g_free(rgba);
  return layer;
}
