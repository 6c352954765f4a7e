#!/usr/bin/python3
"""Generate the committed test fixtures in tests/fixtures/.

Run by hand with Debian's interpreter and packages (python3-numpy, python3-torch):
    /usr/bin/python3 tests/gen_fixtures.py [AREA...]
make check never runs this; it reads the committed outputs.  Each area has its own
module beside this file (gen_fixtures_<area>.py) with a main(outdir) function.
"""
import importlib
import os
import sys

AREAS = ["npy", "safetensors", "nn", "data", "viz", "model", "moe"]

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "fixtures")
    os.makedirs(out, exist_ok=True)
    sys.path.insert(0, here)
    areas = sys.argv[1:] or AREAS
    for area in areas:
        path = os.path.join(here, "gen_fixtures_%s.py" % area)
        if not os.path.exists(path):
            continue
        print("fixtures:", area)
        importlib.import_module("gen_fixtures_%s" % area).main(out)

if __name__ == "__main__":
    main()
