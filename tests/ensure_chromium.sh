#!/bin/sh
# Install Debian's chromium for the browser test when it is missing and we may (root, apt-get).
# Never fails: without a browser the test skips and says why.
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: /usr/bin/chromium missing and cannot install it (not root or no apt-get); the browser test will skip" >&2
    exit 0
fi
echo "ensure_chromium: installing chromium with apt-get (for tests/test_report_browser.py)" >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "ensure_chromium: apt-get could not install chromium; the browser test will skip" >&2
fi
exit 0
