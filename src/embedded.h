/* The Lua files compiled into the binary (written by scripts/embed.lua). */
#ifndef CORAL_EMBEDDED_H
#define CORAL_EMBEDDED_H

#include <stddef.h>

typedef struct coral_embedded_file {
  const char *path;   /* path in the source tree, e.g. "lua/coral/init.lua" */
  const char *data;   /* file contents, NUL-terminated */
  size_t size;        /* bytes, without the NUL */
} coral_embedded_file;

/* Terminated by an entry whose path is NULL. */
extern const coral_embedded_file coral_embedded_files[];

#endif
