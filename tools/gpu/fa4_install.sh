#!/usr/bin/env bash
# On the GPU machine, from the repo root (see fa4_wheels.sh):
#   source .fa4/install.sh stash     # call 1: .fa4/cu13.tar.xz.part0 -> /root/fa4stash (kept while the machine is warm)
#   source .fa4/install.sh           # call 2: unpack part0 + .fa4/cu13.tar.xz.part1 and the small wheels into
#                                    # /root/fa4site once, then put it on PYTHONPATH
site=/root/fa4site stash=/root/fa4stash
if [[ "${1:-}" == stash ]]; then
    mkdir -p "$stash" && cp .fa4/cu13.tar.xz.part0 "$stash/" && echo "fa4: part0 stashed"
else
    if [[ ! -f "$site/.done" ]]; then
        if [[ ! -f "$stash/cu13.tar.xz.part0" || ! -f .fa4/cu13.tar.xz.part1 ]]; then
            echo "fa4: missing $stash/cu13.tar.xz.part0 or .fa4/cu13.tar.xz.part1 (fresh machine? stash first)" >&2
        else
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .fa4/small/*.whl &&
                cat "$stash/cu13.tar.xz.part0" .fa4/cu13.tar.xz.part1 | xz -d | tar xf - -C "$site" && touch "$site/.done" &&
                echo "fa4: installed into $site"
        fi
    fi
    # nvidia-cutlass-dsl's .pth adds dsl_packages (the cutlass package) to sys.path; --target skips .pth files
    export PYTHONPATH="$site:$site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}"
fi
