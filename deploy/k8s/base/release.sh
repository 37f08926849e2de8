#!/usr/bin/env bash
# A release is one export and its model repository on the shared releases volume:
#   $CLIF_DATA/releases/$CLIF_RELEASE/{settings,export/,model_repo/,READY}
#
#   release.sh prepare   the prepare Job: export and write the repository once, then READY
#   release.sh wait      each replica's init container: wait for READY (replicas never export)
#
# `settings` records what the release is made of (model, recipe, backend, repository options);
# a release is never remade with other settings: both commands refuse, and a new CLIF_RELEASE
# is prepared beside the old one, which keeps serving until its replicas are gone.
set -euo pipefail

data="${CLIF_DATA:-/data}"
release="${CLIF_RELEASE:?CLIF_RELEASE is not set}"
dir="$data/releases/$release"
settings="model=${CLIF_MODEL:-tiny} recipe=${CLIF_RECIPE:-} backend=${CLIF_BACKEND:-python} repo-args=${CLIF_REPO_ARGS:-}"

refuse_other_settings() {
  if [ -f "$dir/settings" ] && [ "$(cat "$dir/settings")" != "$settings" ]; then
    echo "release $release was made with '$(cat "$dir/settings")', not '$settings':" \
      "choose a new CLIF_RELEASE for new settings" >&2
    exit 1
  fi
}

prepare() {
  mkdir -p "$dir"
  exec 9>"$dir/.prepare.lock"
  flock 9 # a retried or second Job pod waits here instead of writing beside the first
  refuse_other_settings
  if [ -f "$dir/READY" ]; then
    echo "release $release is ready ($settings)"
    return
  fi
  printf '%s\n' "$settings" >"$dir/settings"
  rm -rf "$dir"/.export-staging-* "$dir"/.export-old-* # left by an export that was killed
  if [ ! -f "$dir/export/manifest.json" ]; then        # an export is moved into place whole
    local options=()
    if [ -n "${CLIF_RECIPE:-}" ]; then options+=(--recipe "$CLIF_RECIPE"); fi
    if [ "${CLIF_BACKEND:-python}" = tensorrt ]; then options+=(--tensorrt); fi
    clif-serve export --model "${CLIF_MODEL:-tiny}" "${options[@]}" --out "$dir/export" --overwrite
  fi
  # shellcheck disable=SC2086 # CLIF_REPO_ARGS is a list of `clif-serve repo` options
  clif-serve repo --export "$dir/export" --out "$dir/model_repo" --backend "${CLIF_BACKEND:-python}" \
    --force ${CLIF_REPO_ARGS:-}
  chmod -R go+rX "$dir" # readable by servers running as another user (exports are made private)
  touch "$dir/READY"
  echo "release $release prepared ($settings)"
}

wait_ready() {
  until [ -f "$dir/READY" ]; do
    refuse_other_settings
    echo "waiting for release $release (written by the clif-serve-prepare Job)"
    sleep "${CLIF_WAIT_SECONDS:-10}"
  done
  refuse_other_settings
  echo "release $release is ready ($settings)"
}

case "${1:-}" in
  prepare) prepare ;;
  wait) wait_ready ;;
  *)
    echo "usage: release.sh prepare|wait" >&2
    exit 2
    ;;
esac
