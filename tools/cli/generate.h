/* gimp-lcm-cli txt2img, img2img and inpaint: the pipelines from the command
 * line, PNG in and out. */
#pragma once

int generate_txt2img(int argc, char **argv);
int generate_img2img(int argc, char **argv);
int generate_inpaint(int argc, char **argv);
