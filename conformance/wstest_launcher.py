# Runs Autobahn|Testsuite's `wstest` (Python 2.7) from a `pip install --target DIR` tree.
#
#   python2.7 wstest_launcher.py DIR [wstest options...]
#   e.g. python2.7 wstest_launcher.py ~/.cache/hbws-autobahn/py27 -m fuzzingserver -s spec.json -u 0
#
# `site.addsitedir` (not just sys.path) is needed: it processes the *.pth files that make the
# `zope` namespace package importable. The fuzzing server is bound to 127.0.0.1 only (upstream
# listens on every interface).
import site
import sys

if len(sys.argv) < 2:
    sys.stderr.write("usage: wstest_launcher.py SITE_DIR [wstest options]\n")
    sys.exit(2)
site.addsitedir(sys.argv[1])
del sys.argv[1]
sys.argv[0] = "wstest"

from autobahntestsuite import wstest  # noqa: E402 (after addsitedir)
from autobahntestsuite import fuzzing  # noqa: E402

_listen = fuzzing.listenWS


def _listen_loopback(factory, contextFactory=None, backlog=50, interface="127.0.0.1"):
    return _listen(factory, contextFactory, backlog, interface)


fuzzing.listenWS = _listen_loopback
wstest.run()
