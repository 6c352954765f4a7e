/*
 * testutil.h: helpers shared by the Check unit tests (not installed).
 */
#ifndef EMOE_TESTUTIL_H
#define EMOE_TESTUTIL_H

#include "emoe.h"

#include <check.h>
#include <stddef.h>

/* Path of a committed fixture: $EMOE_TEST_FILES/name (static buffer). */
const char *tu_fixture(const char *name);
/* A fresh temporary folder for this test process, and a path inside it. */
const char *tu_tmpdir(void);
const char *tu_tmppath(const char *name);
/* Whole-file helpers; tu_read_file returns malloc'd bytes (caller frees). */
void *tu_read_file(const char *path, size_t *size);
void tu_write_file(const char *path, const void *data, size_t size);
int tu_file_exists(const char *path);
/* Number of entries in a folder (to check that no temporary was left behind). */
int tu_count_dir_entries(const char *dir);
/* Path of the shared data folder, or NULL when absent. */
const char *tu_shared_data(void);

/* Run a suite; returns the number of failures (main returns it, 0 = pass). */
int tu_run(Suite *s);

/* Assert a library call failed with code and a message containing substr. */
#define tu_assert_error(rc, err, want_code, substr)                                           \
    do {                                                                                       \
        ck_assert_msg((rc) == (want_code), "status %d, want %d (%s)", (rc), (want_code),       \
                      (err).msg);                                                              \
        ck_assert_msg(strstr((err).msg, (substr)) != NULL, "message '%s' lacks '%s'",         \
                      (err).msg, (substr));                                                    \
    } while (0)

#endif
