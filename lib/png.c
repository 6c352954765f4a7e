/*
 * png.c: a PNG writer (ISO/IEC 15948, the PNG specification): signature, IHDR,
 * IDAT chunks of a zlib stream (deflate at level 6, rows streamed through
 * zlib's deflate, each row with filter type 0), IEND; every chunk's CRC from
 * zlib's crc32.  8-bit gray, RGB or RGBA, no interlace.
 */
#include "config.h"
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define IDAT_MAX 65536 /* bytes of compressed data per IDAT chunk */

static int put_chunk(FILE *f, const char *name, const char *type, const unsigned char *data,
                     size_t len, struct emoe_error *err)
{
    unsigned char head[8], tail[4];
    uint32_t n = (uint32_t)len;
    head[0] = (unsigned char)(n >> 24);
    head[1] = (unsigned char)(n >> 16);
    head[2] = (unsigned char)(n >> 8);
    head[3] = (unsigned char)n;
    memcpy(head + 4, type, 4);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, head + 4, 4);
    if (len)
        crc = crc32(crc, data, (uInt)len);
    tail[0] = (unsigned char)(crc >> 24);
    tail[1] = (unsigned char)(crc >> 16);
    tail[2] = (unsigned char)(crc >> 8);
    tail[3] = (unsigned char)crc;
    if (fwrite(head, 1, 8, f) != 8 || (len && fwrite(data, 1, len, f) != len)
        || fwrite(tail, 1, 4, f) != 4)
        return emoe_error_set(err, EMOE_EIO, "%s: write error: %s", name, strerror(errno));
    return EMOE_OK;
}

int emoe_png_write_stream(FILE *f, const char *name, const unsigned char *pixels, int width,
                          int height, int channels, struct emoe_error *err)
{
    if (!name)
        name = "<png>";
    if (width <= 0 || height <= 0 || width > INT_MAX / 4)
        return emoe_error_set(err, EMOE_EINVAL, "%s: image size %d x %d is not positive", name,
                              width, height);
    if (channels != 1 && channels != 3 && channels != 4)
        return emoe_error_set(err, EMOE_EINVAL, "%s: %d channels (PNG takes 1, 3 or 4)", name,
                              channels);
    size_t rowbytes;
    if (emoe_size_mul(&rowbytes, (size_t)width, (size_t)channels) != EMOE_OK
        || rowbytes > UINT_MAX - 1)
        return emoe_error_set(err, EMOE_ERANGE, "%s: row of %d pixels is too long", name,
                              width);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    static const unsigned char color_type[5] = {0, 0, 0, 2, 6};
    unsigned char ihdr[13] = {
        (unsigned char)(width >> 24), (unsigned char)(width >> 16),
        (unsigned char)(width >> 8), (unsigned char)width,
        (unsigned char)(height >> 24), (unsigned char)(height >> 16),
        (unsigned char)(height >> 8), (unsigned char)height,
        8, color_type[channels], 0, 0, 0,
    };
    if (fwrite(sig, 1, 8, f) != 8)
        return emoe_error_set(err, EMOE_EIO, "%s: write error: %s", name, strerror(errno));
    int rc = put_chunk(f, name, "IHDR", ihdr, sizeof ihdr, err);
    if (rc != EMOE_OK)
        return rc;

    unsigned char *out = malloc(IDAT_MAX), *row = malloc(rowbytes + 1);
    z_stream z;
    memset(&z, 0, sizeof z);
    int zinit = 0;
    if (!out || !row) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: out of memory", name);
        goto done;
    }
    if (deflateInit(&z, 6) != Z_OK) {
        rc = emoe_error_set(err, EMOE_ENOMEM, "%s: zlib deflateInit failed", name);
        goto done;
    }
    zinit = 1;
    z.next_out = out;
    z.avail_out = IDAT_MAX;
    for (int y = 0; y <= height && rc == EMOE_OK; y++) {
        int flush = y == height ? Z_FINISH : Z_NO_FLUSH;
        if (y < height) {
            row[0] = 0; /* filter type None */
            memcpy(row + 1, pixels + (size_t)y * rowbytes, rowbytes);
            z.next_in = row;
            z.avail_in = (uInt)(rowbytes + 1);
        }
        for (;;) {
            int zr = deflate(&z, flush);
            if (zr == Z_STREAM_ERROR) {
                rc = emoe_error_set(err, EMOE_EFORMAT, "%s: zlib deflate failed", name);
                break;
            }
            if (z.avail_out == 0 || (zr == Z_STREAM_END && z.avail_out < IDAT_MAX)) {
                rc = put_chunk(f, name, "IDAT", out, IDAT_MAX - z.avail_out, err);
                z.next_out = out;
                z.avail_out = IDAT_MAX;
                if (rc != EMOE_OK)
                    break;
            }
            if (zr == Z_STREAM_END || (flush == Z_NO_FLUSH && z.avail_in == 0))
                break;
        }
    }
    if (rc == EMOE_OK)
        rc = put_chunk(f, name, "IEND", NULL, 0, err);
done:
    if (zinit)
        deflateEnd(&z);
    free(out);
    free(row);
    return rc;
}

int emoe_png_write(const char *path, const unsigned char *pixels, int width, int height,
                   int channels, struct emoe_error *err)
{
    struct emoe_atomic a;
    int rc = emoe_atomic_open(&a, path, err);
    if (rc != EMOE_OK)
        return rc;
    rc = emoe_png_write_stream(a.f, strcmp(path, "-") ? path : "<stdout>", pixels, width,
                               height, channels, err);
    if (rc != EMOE_OK) {
        emoe_atomic_abort(&a);
        return rc;
    }
    return emoe_atomic_commit(&a, err);
}
