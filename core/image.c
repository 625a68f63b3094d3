/* LcmImage: pictures and masks in memory, the form every user's pixels take
 * before a pipeline sees them. */
#include "image.h"

LcmImage *lcm_image_new(int width, int height, int channels) {
  g_return_val_if_fail(width > 0 && height > 0 && channels > 0, NULL);
  LcmImage *image = g_new(LcmImage, 1);
  image->width = width;
  image->height = height;
  image->channels = channels;
  image->data = g_new0(float, (size_t)width *height *channels);
  return image;
}

LcmImage *lcm_image_from_decoded(const float *planes, int width, int height) {
  LcmImage *image = lcm_image_new(width, height, 3);
  if (!image) return NULL;
  const size_t plane = (size_t)width * height;
  for (size_t i = 0; i < plane; i++)
    for (int c = 0; c < 3; c++)
      image->data[3 * i + c] = CLAMP(planes[c * plane + i] / 2.0f + 0.5f, 0.0f, 1.0f);
  return image;
}

/* RGB of each SD1.5 latent channel (the least-squares fit previews use). */
static const float latent_rgb[4][3] = {
    {0.3512f, 0.2297f, 0.3227f},
    {0.3250f, 0.4974f, 0.2350f},
    {-0.2829f, 0.1762f, 0.2721f},
    {-0.2120f, -0.2616f, -0.7177f},
};

LcmImage *lcm_image_from_latents_approx(const float *latents, int channels, int width, int height) {
  if (channels != (int)G_N_ELEMENTS(latent_rgb) || width < 1 || height < 1) return NULL;
  LcmImage *image = lcm_image_new(width, height, 3);
  const size_t plane = (size_t)width * height;
  for (size_t i = 0; i < plane; i++)
    for (int c = 0; c < 3; c++) {
      float v = 0;
      for (int k = 0; k < channels; k++) v += latents[k * plane + i] * latent_rgb[k][c];
      image->data[3 * i + c] = CLAMP(v / 2.0f + 0.5f, 0.0f, 1.0f);
    }
  return image;
}

void lcm_image_free(LcmImage *image) {
  if (!image) return;
  g_free(image->data);
  g_free(image);
}

gboolean image_check(const LcmImage *image, const char *what, int width, int height, int channels,
                     GError **error) {
  if (!image || !image->data) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID, "no %s image given", what);
    return FALSE;
  }
  if (image->width != width || image->height != height || image->channels != channels) {
    g_set_error(error, LCM_ERROR, LCM_ERROR_INVALID,
                "the %s is %dx%d with %d channels; expected %dx%d with %d", what, image->width,
                image->height, image->channels, width, height, channels);
    return FALSE;
  }
  return TRUE;
}

gboolean lcm_image_composite(LcmImage *result, const LcmImage *source, const LcmImage *mask,
                             GError **error) {
  if (!image_check(result, "result", result ? result->width : 0, result ? result->height : 0, 3,
                   error) ||
      !image_check(source, "source", result->width, result->height, 3, error) ||
      !image_check(mask, "mask", result->width, result->height, 1, error))
    return FALSE;
  size_t pixels = (size_t)result->width * result->height;
  for (size_t i = 0; i < pixels; i++) {
    /* (1-m) s + m r: exactly s where m = 0 and exactly r where m = 1. */
    float m = CLAMP(mask->data[i], 0.0f, 1.0f);
    for (int c = 0; c < 3; c++)
      result->data[3 * i + c] = (1.0f - m) * source->data[3 * i + c] + m * result->data[3 * i + c];
  }
  return TRUE;
}
