#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer (issue 8).
#
# 1. Builds the CPU extension instrumented (VISSIAM_SANITIZE, see vissiam_kernels/_extension.py:
#    -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -O1 -g
#    -fno-omit-frame-pointer, in its own cache directory, never mixed with the normal build).
# 2. Runs, with the sanitizer runtimes preloaded into Python, the kernel tests on the CPU backend
#    and .ci/sanitize_ops.py, which calls every op directly on tail lengths, odd layouts, every
#    dtype, extreme kappa and the documented errors (so every op is covered whatever the tests do).
# Any sanitizer report fails: the runtimes stop the process with exit code 86, and the log is also
# searched for report headers in case something printed one without stopping.
#
# Usage: bash .ci/sanitize.sh      (PYTHON=... to pick the interpreter; about a minute on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
start=$(date +%s)

# The runtimes must match the compiler torch.utils.cpp_extension builds with (CXX, else c++).
cxx=${CXX:-c++}
asan=$("$cxx" -print-file-name=libasan.so)
ubsan=$("$cxx" -print-file-name=libubsan.so)
for lib in "$asan" "$ubsan"; do
  if [[ "$lib" != /* || ! -e "$lib" ]]; then
    echo "sanitize: $cxx has no $lib (install the gcc sanitizer runtimes)" >&2
    exit 1
  fi
done

export VISSIAM_SANITIZE=address,undefined,float-cast-overflow
export VISSIAM_BACKEND=cpu
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Options, each for a reason:
#   detect_leaks=0        CPython and torch keep allocations alive at exit by design, so LeakSanitizer
#                         would report theirs; leaks of the ops are measured by RSS in the leak test.
#   halt_on_error=1       stop at the first report (the default, stated so nobody flips it).
#   exitcode=86           a report ends the process with a code no test failure gives.
#   abort_on_error=0      exit, not abort: no core dump, and the exit code above.
#   detect_stack_use_after_return=1  also catch pointers to a returned frame (cheap at this size).
#   strict_init_order=1, check_initialization_order=1  static-initialisation order bugs in the library.
# No suppressions are needed: torch 2.14 / CPython 3.11 give no report under these options (no
# alloc-dealloc-mismatch, ODR or shadow-gap trips on the CPU path); add a file only with a reason.
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:exitcode=86:abort_on_error=0
ASAN_OPTIONS+=:detect_stack_use_after_return=1:strict_init_order=1:check_initialization_order=1
export ASAN_OPTIONS
#   halt_on_error=1, print_stacktrace=1: stop at the first undefined behaviour, with where it happened
#   (the build has -fno-sanitize-recover=all, so every check is fatal anyway).
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=86:abort_on_error=0

log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {  # run a command with the runtimes preloaded, keep its output, fail on any report
  local rc
  set +e
  LD_PRELOAD="$asan:$ubsan${LD_PRELOAD:+:$LD_PRELOAD}" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$log"; then
    echo "sanitize: FAILED, sanitizer report above (exit code $rc)" >&2
    exit 1
  fi
  if [ "$rc" -ne 0 ]; then
    echo "sanitize: FAILED: '$*' exited with $rc" >&2
    exit "$rc"
  fi
}

# Build (and load once) with the runtime preloaded, as the library needs, but with LD_PRELOAD
# dropped for the compiler subprocesses ninja starts.
run "$PYTHON" -c "
import os
os.environ.pop('LD_PRELOAD', None)
from vissiam_kernels._extension import load_cpu_library
load_cpu_library()
"
echo "sanitize: instrumented build ready after $(( $(date +%s) - start )) s"

run "$PYTHON" .ci/sanitize_ops.py

# The kernel tests that run on the CPU build (the CUDA/Triton/model/packaging tests do not reach it).
# --capture=sys: pytest's default fd capture would swallow a report written to fd 2 by a process
# the runtime then ends (a bare exit code 86, no message); this way the report reaches the log.
run "$PYTHON" -m pytest -p no:cacheprovider --capture=sys -x -q \
  tests/test_nll.py tests/test_api.py tests/test_ops.py tests/test_bad_input.py \
  tests/test_fused_training.py tests/test_special_functions.py tests/test_golden_table.py

echo "sanitize: ASan + UBSan clean in $(( $(date +%s) - start )) s"
