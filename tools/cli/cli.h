/* Helpers the gimp-lcm-cli commands share (defined in main.c). */
#pragma once

#include <glib.h>

/* Parses a command's options; prints the problem and returns FALSE on a bad
 * option. */
gboolean cli_parse_options(GOptionContext *context, int *argc, char ***argv);
/* Prints "gimp-lcm-cli: MESSAGE", frees the error and returns 1 (the exit
 * status of a failed command). */
int cli_report_error(GError *error);
/* The model given (a path, catalogue name or Hub repo id: lcm_resolve), or
 * the default one, saying plainly on stderr which it is (and when it is the
 * bundled tiny test model). g_free it. */
char *cli_resolve_model(const char *given, GError **error);
