"""Offline stand-in for the get-pip script that ansible-test downloads (from a host these machines
cannot reach). scripts/bootstrap.sh copies it to ~/.ansible/test/cache/get_pip_<version>.py.

ansible-test runs it inside a new venv that has no pip yet, with pip install arguments (plus the
get-pip-only options --no-setuptools/--no-wheel). Bring pip in with ensurepip, then let pip install
the requested packages; the machine's pip configuration (index, CA bundle) applies as usual.
"""

import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", *args]))
