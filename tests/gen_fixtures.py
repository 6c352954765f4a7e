#!/usr/bin/python3
"""Generate the committed test fixtures in tests/fixtures/.

Run by hand with Debian's interpreter and packages (python3-numpy, python3-torch):
    /usr/bin/python3 tests/gen_fixtures.py
make check never runs this; it reads the committed outputs.
"""
