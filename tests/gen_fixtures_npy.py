#!/usr/bin/python3
"""Fixtures of the .npy/.npz tests (tests/check_npy.c, tests/check_npz.c).

Written by numpy itself (Debian's python3-numpy), so the C tests compare against the
reference writer byte for byte.  Contents are deterministic so C recomputes them:
element i (in C order) of a numeric fixture is
    v(i) = ((i * 37) % 251 - OFF) * SCALE        (see VALUES below)
and bool elements are (i % 3 == 0).

Run: /usr/bin/python3 tests/gen_fixtures.py npy
"""
import io
import itertools
import os
import zipfile

import numpy as np
import numpy.lib.format as npf

# dtype code -> (OFF, SCALE); keep in sync with value_of() in tests/check_npy.c
VALUES = {
    'f4': (125, 0.25), 'f8': (125, 0.25), 'f2': (125, 0.25),
    'u1': (0, 1), 'i1': (125, 1), 'i2': (125, 100), 'u2': (0, 200),
    'i4': (125, 1000003), 'u4': (0, 17000000), 'i8': (125, 10**15),
    'u8': (0, 7 * 10**16),
}
CODES = ['f4', 'f8', 'f2', 'u1', 'i1', 'i2', 'u2', 'i4', 'u4', 'i8', 'u8', 'b1']
SHAPE = (2, 3, 4)


def values(code, shape):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    if code == 'b1':
        return (i % 3 == 0).reshape(shape)
    off, scale = VALUES[code]
    base = (i * 37) % 251 - off
    if code[0] == 'f':
        return (base.astype(np.float64) * scale).astype('<' + code).reshape(shape)
    # exact integer arithmetic (python ints), then cast
    vals = [int(b) * scale for b in base]
    return np.array(vals, dtype=np.dtype('<' + code) if code[1] != '1' else code).reshape(shape)


def save(outdir, name, arr, version=None):
    path = os.path.join(outdir, name)
    with open(path, 'wb') as f:
        if version is None:
            np.save(f, arr)
        else:
            npf.write_array(f, arr, version=version)


def main(outdir):
    for code in CODES:
        a = values(code, SHAPE)
        save(outdir, 'npy_%s.npy' % code, a)                       # little-endian, C order
        save(outdir, 'npy_%s_fortran.npy' % code, np.asfortranarray(a))
        if code not in ('u1', 'i1', 'b1'):
            save(outdir, 'npy_%s_be.npy' % code, a.astype(a.dtype.newbyteorder('>')))
            save(outdir, 'npy_%s_be_fortran.npy' % code,
                 np.asfortranarray(a.astype(a.dtype.newbyteorder('>'))))
    f4 = values('f4', SHAPE)
    save(outdir, 'npy_v2.npy', f4, version=(2, 0))
    save(outdir, 'npy_v3.npy', f4, version=(3, 0))
    # shapes: scalar, 1-D, empty, rank 6, and header-only shapes with wide dims that
    # move the padding through every case (including the 64-space one)
    save(outdir, 'npy_scalar.npy', np.float32(3.5))
    save(outdir, 'npy_scalar_i8.npy', np.int64(-7))
    save(outdir, 'npy_1d.npy', values('i4', (5,)))
    save(outdir, 'npy_empty.npy', np.zeros((0,), np.float32))
    save(outdir, 'npy_rank6.npy', values('u1', (1, 2, 1, 3, 1, 2)))
    # one shape per distinct padding length (numpy rejects shapes whose non-zero
    # dims overflow, so all these are empty arrays with wide dims)
    wide, seen = [], set()
    for r in range(1, 7):
        for digs in itertools.product((0, 1, 3, 7, 12, 18), repeat=r):
            shp = tuple(int('9' * d) if d else 0 for d in digs)
            prod = 1
            for d in shp:
                prod *= d if d else 1
            if prod > 2**62 or 0 not in shp:
                continue
            buf = io.BytesIO()
            np.save(buf, np.zeros(shp, np.uint8))
            b = buf.getvalue()
            pad = len(b) - len(b.rstrip(b' \n'))
            if pad not in seen:
                seen.add(pad)
                wide.append(shp)
    with open(os.path.join(outdir, 'npy_wide_shapes.txt'), 'w') as lst:
        for j, shp in enumerate(wide):
            name = 'npy_wide_%02d.npy' % j
            buf = io.BytesIO()
            np.save(buf, np.zeros(shp, np.uint8))
            b = buf.getvalue()
            lst.write('%s %s\n' % (name, ' '.join(str(d) for d in shp)))
            with open(os.path.join(outdir, name), 'wb') as f:
                f.write(b)
    # fixed-width byte strings, as a dataset's `classes`
    save(outdir, 'npy_strings.npy', np.array([b'cat', b'horse', b'', b'ox']))
    save(outdir, 'npy_strings_empty.npy', np.array([], dtype='S'))
    save(outdir, 'npy_unicode.npy', np.array(['cat', 'dog']))
    save(outdir, 'npy_complex.npy', np.zeros(3, np.complex64))
    save(outdir, 'npy_object.npy', np.array([1, 'a', None], dtype=object))
    save(outdir, 'npy_structured.npy', np.zeros(2, dtype=[('a', '<f4'), ('b', '<i4')]))

    # .npz: the dataset layout, stored (np.savez) and deflated (np.savez_compressed)
    members = dict(images=values('u1', (2, 4, 4, 3)), labels=values('i8', (2,)),
                   classes=np.array([b'cat', b'horse']), weights=values('f4', SHAPE),
                   half_be=values('f2', SHAPE).astype('>f2'),
                   fort=np.asfortranarray(values('i4', SHAPE)), scalar=np.float64(2.5))
    np.savez(os.path.join(outdir, 'npz_stored.npz'), **members)
    np.savez_compressed(os.path.join(outdir, 'npz_deflated.npz'), **members)
    # zipfile with force_zip64 (numpy does this too) and a non-.npy member
    with zipfile.ZipFile(os.path.join(outdir, 'npz_zip64.npz'), 'w',
                         zipfile.ZIP_DEFLATED) as z:
        for name in ('images', 'labels'):
            with z.open(name + '.npy', 'w', force_zip64=True) as f:
                npf.write_array(f, members[name])
        z.writestr('README.txt', b'not an array\n')
    # written to a non-seekable stream: data descriptors after each member
    class Unseekable(io.RawIOBase):
        def __init__(self, f):
            self.f = f
        def writable(self):
            return True
        def write(self, b):
            return self.f.write(b)
    with open(os.path.join(outdir, 'npz_streamed.npz'), 'wb') as raw:
        with zipfile.ZipFile(Unseekable(raw), 'w', zipfile.ZIP_STORED) as z:
            for name in ('images', 'labels'):
                with z.open(name + '.npy', 'w') as f:
                    npf.write_array(f, members[name])
    # duplicate member names
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with zipfile.ZipFile(os.path.join(outdir, 'npz_duplicate.npz'), 'w') as z:
            for _ in range(2):
                buf = io.BytesIO()
                np.save(buf, members['labels'])
                z.writestr('labels.npy', buf.getvalue())
    # a member whose .npy header is broken
    with zipfile.ZipFile(os.path.join(outdir, 'npz_badmember.npz'), 'w') as z:
        z.writestr('bad.npy', b'\x93NUMPY\x01\x00\x10\x00{"descr": nope}\n')
    # a member whose data is shorter than its header says
    with zipfile.ZipFile(os.path.join(outdir, 'npz_truncmember.npz'), 'w') as z:
        buf = io.BytesIO()
        np.save(buf, np.arange(10, dtype='<f8'))
        z.writestr('x.npy', buf.getvalue()[:-40])


if __name__ == '__main__':
    import sys
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                             'fixtures'))
