# Sourced by .ci/run and scripts/test-postgres.sh: the Standard Webhooks reference library
# (Python `standardwebhooks`, pure Python, no dependencies), which the forwarding test
# `forwards::the_reference_library_verifies_a_delivery` checks flowhook's signatures with.
# Installed once into the build directory; its path goes to the test in FLOWHOOK_TEST_PYTHONPATH.
pylib="$(pwd)/${CARGO_TARGET_DIR:-target}/pylib"
case "${CARGO_TARGET_DIR:-}" in /*) pylib="$CARGO_TARGET_DIR/pylib" ;; esac
if [ ! -f "$pylib/standardwebhooks/__init__.py" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        sudo=""
        if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -q
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3 python3-pip
    fi
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        --target "$pylib" standardwebhooks==1.3.0
fi
export FLOWHOOK_TEST_PYTHONPATH="$pylib"
