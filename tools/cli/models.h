/* gimp-lcm-cli models: list, get and verify catalogue entries. */
#pragma once

int models_command(int argc, char **argv);
