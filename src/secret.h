/* secret.h: wiping secrets (passwords) before their memory goes back to the allocator, where
 * a later allocation or a core dump would show them. GLib has no secure free; this is the
 * one place that does it. */
#pragma once
#include <glib.h>
#include <string.h>

/* Overwrites a NUL-terminated secret in place (explicit_bzero: not optimised away). */
static inline void
ps_secret_wipe(char *s)
{
  if (s)
    explicit_bzero(s, strlen(s));
}

/* Wipes, then g_free()s. */
static inline void
ps_secret_free(char *s)
{
  ps_secret_wipe(s);
  g_free(s);
}
