/*
 * version.c: emoe's version and the versions of the libraries it runs on.
 */
#include "config.h"
#include "internal.h"

#include <archive.h>
#include <cblas.h>
#include <jpeglib.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

const char *emoe_version(void)
{
    return EMOE_VERSION_STRING;
}

const char *emoe_version_details(void)
{
    static char buf[512];
    char blas[128];
    const char *cfg = openblas_get_config();
    /* "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64": keep name and version */
    int n = 0;
    if (cfg)
        sscanf(cfg, "%*s %n", &n);
    snprintf(blas, sizeof blas, "OpenBLAS %.*s", cfg ? (int)strcspn(cfg + n, " ") : 1,
             cfg ? cfg + n : "?");
    snprintf(buf, sizeof buf,
             "libemoe %s, %s (kernel %s), %s, libjpeg-turbo %d.%d.%d, zlib %s",
             EMOE_VERSION_STRING, blas, emoe_blas_corename(), archive_version_string(),
             LIBJPEG_TURBO_VERSION_NUMBER / 1000000, LIBJPEG_TURBO_VERSION_NUMBER / 1000 % 1000,
             LIBJPEG_TURBO_VERSION_NUMBER % 1000, zlibVersion());
    return buf;
}
