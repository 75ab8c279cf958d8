#!/usr/bin/env bash
# Fenice's failover on two real clusters and a witness bucket, by the runbooks:
# runbooks/install.md (an operator at each site, the witness, a repository, a
# warm tenant and its first backup), then, with RUN_FAILOVER=1, a planned failover
# to the standby (runbooks/planned-failover.md). Every `sh` block of each runbook
# runs in order, and at install the `sh kubelet` blocks too (the waits for pods,
# which the tests cannot run). Opt-in, never run in CI (it needs real clusters
# and credentials); docs/real-cluster.md says what to prepare.
#
#   PRIMARY=westpole STANDBY=aks STANDBY_KUBECONFIG=aks.kubeconfig STANDBY_USER=fenice-site \
#   CONTROL_KUBECONFIG=westpole.kubeconfig CONTROL_USER=fenice-standby \
#   REPO_BUCKET=fenice-tenants REPO_ENDPOINT=https://s3.eu-south-mil.io.cloud.ovh.net \
#   REPO_REGION=eu-south-mil WITNESS_BUCKET=fenice-witness bash scripts/real-cluster.sh
#
# With the bucket keys and the repository password in access-key-id.txt,
# secret-access-key.txt and repository-password.txt, in this directory.
# `bash scripts/real-cluster.sh --print` prints what it would run.
set -euo pipefail
cd "$(dirname "$0")/.."

# A runbook as one script: its blocks fenced `sh` (and `sh kubelet` when $2 is
# "kubelet"), in order, each section's heading printed before its blocks.
runbook() {
  local line fence="" block=0
  while IFS= read -r line; do
    if [[ $block == 1 ]]; then
      if [[ $line == '```' ]]; then block=0; else printf '%s\n' "$line"; fi
    elif [[ $line == '```sh' || ($line == '```sh kubelet' && ${2:-} == kubelet) ]]; then
      block=1
    elif [[ $line == '## '* ]]; then
      printf 'printf "\\n== %%s: %%s\\n" %q %q\n' "$1" "${line#\#\# }"
    fi
  done < "$1"
}

script=$(runbook runbooks/install.md kubelet)
if [[ "${RUN_FAILOVER:-0}" == 1 ]]; then
  script+=$'\n'"export CONTROL=\"\$PRIMARY\" PLAN=primary-to-standby FAILOVER=\"\${FAILOVER_NAME:-planned-\$(date -u +%Y%m%d-%H%M)}\""
  script+=$'\n'"export REASON=\"\${REASON:-trying the plan on real clusters}\""
  script+=$'\n'$(runbook runbooks/planned-failover.md)
fi
if [[ "${1:-}" == --print ]]; then
  printf '%s\n' "$script"
  exit 0
fi
bash -euo pipefail -c "$script"

cat <<'WATCH'

== What to watch
  kubectl --context "$PRIMARY" get invoicingtenants,backups,failovers -A -w
  kubectl --context "$PRIMARY" get failoverplan primary-to-standby -o jsonpath='{.status.sites}'
  kubectl --context "$PRIMARY" -n fenice-system logs deployment/fenice-operator
  kubectl --context "$STANDBY" -n fenice-system logs deployment/fenice-operator
  kubectl --context "$STANDBY" -n invoicing get statefulsets,jobs,pods -l fenice.io/tenant=studio-rossi
Remove the tenant: kubectl --context "$PRIMARY" -n invoicing delete invoicingtenant studio-rossi (its
objects at both sites go with it; its backups stay in the bucket).
WATCH
