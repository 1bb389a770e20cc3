#!/usr/bin/env bash
# The numerically sensitive tests (pytest marker `isa`) under each family of CPU kernels this machine can
# run: oneDNN capped at AVX2, AVX512_CORE or AVX512_CORE_BF16, uncapped, and ATen's kernels at AVX2, one
# after another. Exits non-zero if any setting failed; arguments go to pytest. docs/reliability.md says
# which CPUs each setting stands for.
set -euo pipefail
cd "$(dirname "$0")/.."
# only the files that use the marker: collecting the whole suite would add seconds to every setting
mapfile -t files < <(grep -rlE --include='test_*.py' 'mark\.isa' tests)
failed=()
for setting in ONEDNN_MAX_CPU_ISA=AVX2 ONEDNN_MAX_CPU_ISA=AVX512_CORE ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 \
    uncapped ATEN_CPU_CAPABILITY=avx2; do
    echo "== isa matrix: $setting"
    assignment=()
    [[ $setting == uncapped ]] || assignment=("$setting")
    if ! env -u ONEDNN_MAX_CPU_ISA -u ATEN_CPU_CAPABILITY ${assignment[@]+"${assignment[@]}"} \
        .venv/bin/python -m pytest -m isa -q -p no:cacheprovider "${files[@]}" "$@"; then
        failed+=("$setting")
    fi
done
if ((${#failed[@]})); then
    echo "isa matrix: failed under ${failed[*]}" >&2
    exit 1
fi
echo "isa matrix: passed under all 5 settings"
