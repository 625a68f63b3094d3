/* The SDXL-family pipeline rules beyond the golden cases: diffusers'
 * default strengths per family, SDXL img2img slicing the schedule even with
 * an LCM UNet, and the size conditioning (time ids) reaching the UNet. */
#include "lcm.h"
#include "testutil.h"

#include <string.h>

static LcmPipeline *open_pipeline(const char *relative) {
  g_autofree char *path = test_data_path(relative);
  g_autoptr(GError) error = NULL;
  LcmModel *model = lcm_model_open(path, &error);
  g_assert_no_error(error);
  LcmPipeline *pipeline = lcm_pipeline_new(model, LCM_PRECISION_FP32, &error);
  g_assert_no_error(error);
  lcm_model_free(model);
  return pipeline;
}

static void test_default_strength(void) {
  LcmPipeline *sdxl = open_pipeline("golden-sdxl/tiny-sdxl-lcm");
  g_assert_cmpfloat(lcm_pipeline_default_strength(sdxl, LCM_MODE_TXT2IMG), ==, 1.0);
  g_assert_cmpfloat(lcm_pipeline_default_strength(sdxl, LCM_MODE_IMG2IMG), ==, 0.3);
  g_assert_cmpfloat(lcm_pipeline_default_strength(sdxl, LCM_MODE_INPAINT), ==, 0.9999);
  g_assert_cmpfloat(lcm_pipeline_default_guidance(sdxl), ==, 8.0);
  lcm_pipeline_free(sdxl);
  LcmPipeline *sd = open_pipeline("golden/tiny-lcm");
  g_assert_cmpfloat(lcm_pipeline_default_strength(sd, LCM_MODE_IMG2IMG), ==, 0.8);
  g_assert_cmpfloat(lcm_pipeline_default_strength(sd, LCM_MODE_INPAINT), ==, 1.0);
  lcm_pipeline_free(sd);
}

typedef struct {
  int count;
  int timesteps[LCM_MAX_STEPS];
} Steps;

static void record_step(const LcmProgress *progress, gpointer data) {
  Steps *steps = data;
  steps->timesteps[steps->count++] = progress->timestep;
}

/* A run's final latents (g_free them) and the timesteps it stepped
 * through. */
static float *run(LcmPipeline *pipeline, LcmPipelineParams *params, Steps *steps) {
  memset(steps, 0, sizeof *steps);
  params->progress = record_step;
  params->progress_data = steps;
  g_autoptr(GError) error = NULL;
  int width, height;
  float *latents = lcm_pipeline_run_latents(pipeline, params, &width, &height, &error);
  g_assert_no_error(error);
  return latents;
}

/* StableDiffusionXLImg2ImgPipeline keeps the last int(steps x strength)
 * timesteps, where SD1.5's LCM img2img pipeline respaces. */
static void test_img2img_slices(void) {
  LcmPipeline *pipeline = open_pipeline("golden-sdxl/tiny-sdxl-lcm");
  LcmImage *source = lcm_image_new(64, 64, 3);
  for (size_t i = 0; i < (size_t)64 * 64 * 3; i++) source->data[i] = (float)(i % 7) / 7.0f;
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.mode = LCM_MODE_IMG2IMG;
  params.prompt = "a red car";
  params.image = source;
  params.strength = 0.5;
  params.guidance_scale = 8.0;
  Steps steps;
  g_free(run(pipeline, &params, &steps));
  g_assert_cmpint(steps.count, ==, 2);
  g_assert_cmpint(steps.timesteps[0], ==, 499);
  g_assert_cmpint(steps.timesteps[1], ==, 259);
  lcm_image_free(source);
  lcm_pipeline_free(pipeline);
}

/* The default time ids are the output's size with crop (0, 0): giving them
 * explicitly changes nothing, another original size changes the picture. */
static void test_size_conditioning(void) {
  LcmPipeline *pipeline = open_pipeline("golden-sdxl/tiny-sdxl-lcm");
  LcmPipelineParams params;
  lcm_pipeline_params_init(&params);
  params.prompt = "a cyborg";
  params.width = 64;
  params.height = 48;
  params.steps = 2;
  params.guidance_scale = 8.0;
  const size_t n = (size_t)4 * (64 / 8) * (48 / 8);
  Steps steps;
  g_autofree float *by_default = run(pipeline, &params, &steps);
  params.original_width = params.target_width = 64;
  params.original_height = params.target_height = 48;
  g_autofree float *explicit_sizes = run(pipeline, &params, &steps);
  g_assert_cmpmem(by_default, n * sizeof(float), explicit_sizes, n * sizeof(float));
  params.original_width = 1024;
  params.original_height = 768;
  params.crop_top = 16;
  g_autofree float *other = run(pipeline, &params, &steps);
  g_test_message("max |latent change| %g", test_max_abs_diff(by_default, other, n));
  /* small with tiny random weights, but far above rounding: identical inputs match exactly */
  g_assert_cmpfloat(test_max_abs_diff(by_default, other, n), >, 1e-6);
  lcm_pipeline_free(pipeline);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/pipeline-xl/default-strength", test_default_strength);
  g_test_add_func("/pipeline-xl/img2img-slices", test_img2img_slices);
  g_test_add_func("/pipeline-xl/size-conditioning", test_size_conditioning);
  return g_test_run();
}
