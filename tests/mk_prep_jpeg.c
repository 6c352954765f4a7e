/*
 * mk_prep_jpeg.c: writes small JPEGs for the shell tests of emoe-prep (so that
 * `make check` needs neither Python nor committed images).
 *
 *   mk_prep_jpeg OUT.jpg WIDTH HEIGHT RED GREEN [gray]
 *
 * The image has red channel RED and green channel GREEN everywhere (so a class can be
 * recognised after decoding and resizing) and a horizontal ramp in blue; "gray" writes
 * a one-component JPEG of level RED instead.  Quality 95.  Exit 0, or 1 with a message.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

static int arg_int(const char *s, int min, int max)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < min || v > max) {
        fprintf(stderr, "mk_prep_jpeg: bad number '%s' (%d..%d)\n", s, min, max);
        exit(1);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: mk_prep_jpeg OUT.jpg WIDTH HEIGHT RED GREEN [gray]\n");
        return 1;
    }
    int w = arg_int(argv[2], 1, 4096), h = arg_int(argv[3], 1, 4096);
    int red = arg_int(argv[4], 0, 255), green = arg_int(argv[5], 0, 255);
    int gray = argc == 7 && strcmp(argv[6], "gray") == 0;
    int nc = gray ? 1 : 3;
    unsigned char *px = malloc((size_t)w * h * nc);
    if (!px)
        return 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *p = px + ((size_t)y * w + x) * nc;
            p[0] = (unsigned char)red;
            if (!gray) {
                p[1] = (unsigned char)green;
                p[2] = (unsigned char)(x * 255 / w);
            }
        }
    FILE *f = fopen(argv[1], "wb");
    if (!f) {
        perror(argv[1]);
        free(px);
        return 1;
    }
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = nc;
    c.in_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = px + (size_t)c.next_scanline * w * nc;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(px);
    if (fclose(f) != 0) {
        perror(argv[1]);
        return 1;
    }
    return 0;
}
