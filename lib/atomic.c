/*
 * atomic.c: write a file so that it is either the old one or the complete new one,
 * never a partial one (redis rdbSave, git lockfile): a temporary file in the same
 * folder, fflush, fsync, checked close, rename over the target, fsync the folder;
 * on any failure the temporary is unlinked and the target is untouched.
 */
#include "config.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return NULL;
    char *d = strdup(dirname(copy));
    free(copy);
    return d;
}

int emoe_atomic_open(struct emoe_atomic *a, const char *path, struct emoe_error *err)
{
    memset(a, 0, sizeof *a);
    if (strcmp(path, "-") == 0) {
        a->f = stdout;
        a->is_stdout = 1;
        return EMOE_OK;
    }
    size_t len = strlen(path);
    a->path = strdup(path);
    a->tmp_path = malloc(len + 16);
    if (!a->path || !a->tmp_path) {
        free(a->path);
        free(a->tmp_path);
        a->path = a->tmp_path = NULL;
        return emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", path);
    }
    /* "dir/.name.XXXXXX" would hide it; keep the name visible: "name.tmp-XXXXXX" */
    snprintf(a->tmp_path, len + 16, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(a->tmp_path);
    if (fd < 0) {
        int e = errno;
        free(a->path);
        free(a->tmp_path);
        a->path = a->tmp_path = NULL;
        return emoe_error_set(err, EMOE_EIO, "%s: cannot create a temporary file: %s", path,
                              strerror(e));
    }
    /* mkstemp makes 0600; give the file the mode a plain creat() would. */
    mode_t mask = umask(0);
    umask(mask);
    (void)fchmod(fd, 0666 & ~mask);
    a->f = fdopen(fd, "wb");
    if (!a->f) {
        int e = errno;
        close(fd);
        unlink(a->tmp_path);
        free(a->path);
        free(a->tmp_path);
        a->path = a->tmp_path = NULL;
        return emoe_error_set(err, EMOE_EIO, "%s: %s", path, strerror(e));
    }
    return EMOE_OK;
}

static void release(struct emoe_atomic *a)
{
    free(a->path);
    free(a->tmp_path);
    a->path = a->tmp_path = NULL;
    a->f = NULL;
}

int emoe_atomic_commit(struct emoe_atomic *a, struct emoe_error *err)
{
    if (a->is_stdout) {
        int bad = fflush(a->f) != 0 || ferror(a->f);
        a->f = NULL;
        if (bad)
            return emoe_error_set(err, EMOE_EIO, "<stdout>: write error: %s", strerror(errno));
        return EMOE_OK;
    }
    if (!a->f)
        return emoe_error_set(err, EMOE_EINVAL, "atomic file already closed");
    int e = 0;
    if (fflush(a->f) != 0 || ferror(a->f))
        e = errno ? errno : EIO;
    if (!e && fsync(fileno(a->f)) != 0 && errno != EINVAL)
        e = errno;
    if (fclose(a->f) != 0 && !e)
        e = errno;
    a->f = NULL;
    if (!e && rename(a->tmp_path, a->path) != 0)
        e = errno;
    if (e) {
        unlink(a->tmp_path);
        int rc = emoe_error_set(err, EMOE_EIO, "%s: cannot write: %s", a->path, strerror(e));
        release(a);
        return rc;
    }
    /* Make the rename itself durable. */
    char *dir = dir_of(a->path);
    if (dir) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    release(a);
    return EMOE_OK;
}

void emoe_atomic_abort(struct emoe_atomic *a)
{
    if (a->is_stdout) {
        if (a->f)
            fflush(a->f);
        a->f = NULL;
        return;
    }
    if (a->f)
        fclose(a->f);
    if (a->tmp_path)
        unlink(a->tmp_path);
    release(a);
}
