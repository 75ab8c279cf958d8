#!/usr/bin/env bash
# The Kubernetes part of Fenice on two real clusters and an S3 bucket at a third
# provider: install, declare, deploy one tenant at the standby site, back it up
# as a Job there, and print what to watch. Opt-in, never run in CI (it needs
# real clusters and credentials); docs/real-cluster.md says what to prepare.
#
#   PRIMARY_CONTEXT=westpole STANDBY_CONTEXT=aks STANDBY_KUBECONFIG=aks.kubeconfig \
#   STANDBY_USER=fenice-site REPO_ENDPOINT=https://s3.eu-south-mil.io.cloud.ovh.net \
#   REPO_BUCKET=fenice-tenants REPO_REGION=eu-south-mil REPO_ACCESS_KEY_ID=… \
#   REPO_SECRET_ACCESS_KEY=… REPO_PASSWORD=… bash scripts/real-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need() { [[ -n "${!1:-}" ]] || { echo "real-cluster.sh: set $1 ($2)" >&2; exit 2; }; }
need PRIMARY_CONTEXT "the kubectl context of the cluster the operator runs in"
need STANDBY_CONTEXT "the kubectl context of the standby site's cluster"
need STANDBY_KUBECONFIG "a kubeconfig file the operator reaches the standby cluster with"
need STANDBY_USER "the user that kubeconfig authenticates as, granted the tenant-namespace Role there"
need REPO_BUCKET "an S3 bucket at a third provider"
need REPO_ACCESS_KEY_ID "its access key"
need REPO_SECRET_ACCESS_KEY "its secret key"
need REPO_PASSWORD "the repository password"
REPO_ENDPOINT=${REPO_ENDPOINT:-}
REPO_REGION=${REPO_REGION:-us-east-1}
NAMESPACE=${NAMESPACE:-invoicing}
TENANT=${TENANT:-studio-rossi}
STORAGE_CLASS=${STORAGE_CLASS:-}
INGRESS_CLASS=${INGRESS_CLASS:-nginx}
DNS_ZONE=${DNS_ZONE:-fatture.example.it}
REGISTRY=${REGISTRY:-}
# The operator's own Deployment; SKIP_OPERATOR=1 when it runs elsewhere (e.g. `fenice operator` on a laptop).
SKIP_OPERATOR=${SKIP_OPERATOR:-0}
# What "the stack runs" means: StackRunning on a real cluster.
WAIT_REASON=${WAIT_REASON:-StackRunning}
TIMEOUT=${TIMEOUT:-600s}
# Server-side schema validation of what is applied; `false` against `fenice apiserver`, which has no OpenAPI document.
VALIDATE=${VALIDATE:-true}

primary() { kubectl --context "$PRIMARY_CONTEXT" "$@"; }
standby() { kubectl --context "$STANDBY_CONTEXT" "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "1. Fenice in the primary cluster: CRDs, RBAC, the operator"
if [[ "$SKIP_OPERATOR" == 1 ]]; then
  primary apply --validate="$VALIDATE" -f manifests/namespace.yaml -f manifests/crds.yaml -f manifests/rbac.yaml
else
  primary apply --validate="$VALIDATE" -k manifests/
fi

step "2. The tenants' namespace in both clusters, with the tenant-namespace Role"
for ctx in "$PRIMARY_CONTEXT" "$STANDBY_CONTEXT"; do
  kubectl --context "$ctx" create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl --context "$ctx" apply --validate="$VALIDATE" -f -
done
primary apply --validate="$VALIDATE" -n "$NAMESPACE" -f manifests/site/tenant-namespace-rbac.yaml
# At the standby, the Role is bound to the identity of STANDBY_KUBECONFIG, not to the operator's ServiceAccount.
standby apply --validate="$VALIDATE" -n "$NAMESPACE" -f <(sed '/^---$/,$d' manifests/site/tenant-namespace-rbac.yaml)
standby create rolebinding fenice-tenant-stacks -n "$NAMESPACE" --role=fenice-tenant-stacks --user="$STANDBY_USER" \
  --dry-run=client -o yaml | standby apply --validate="$VALIDATE" -f -

step "3. Secrets in fenice-system: the standby's kubeconfig, the repository's credentials and password"
primary create secret generic site-standby -n fenice-system --from-file=kubeconfig="$STANDBY_KUBECONFIG" \
  --dry-run=client -o yaml | primary apply --validate="$VALIDATE" -f -
primary create secret generic repo-s3 -n fenice-system \
  --from-literal=AWS_ACCESS_KEY_ID="$REPO_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$REPO_SECRET_ACCESS_KEY" \
  --from-literal=password="$REPO_PASSWORD" \
  --dry-run=client -o yaml | primary apply --validate="$VALIDATE" -f -

step "4. The standby Site, the repository, the policy and one tenant placed at the standby"
optional() { [[ -n "$2" ]] && printf '%s: %s\n' "$1" "$2" || true; }
primary apply --validate="$VALIDATE" -f - <<EOF
apiVersion: fenice.io/v1alpha1
kind: Site
metadata:
  name: standby
spec:
  provider: Azure
  region: standby
  role: Standby
  cluster:
    driver: Kubernetes
    kubeconfigSecretRef: {name: site-standby, key: kubeconfig}
  platform:
$(optional "    storageClass" "$STORAGE_CLASS")
    exposure: {kind: Ingress, ingressClassName: $INGRESS_CLASS}
    dnsZone: $DNS_ZONE
    dnsSwitch: ExternalDnsAnnotation
$(optional "    imageRegistry" "$REGISTRY")
---
apiVersion: fenice.io/v1alpha1
kind: BackupRepository
metadata:
  name: s3-backups
spec:
  provider: Ovhcloud
  storage:
    type: S3
    s3:
      bucket: $REPO_BUCKET
      prefix: fenice
      region: $REPO_REGION
$(optional "      endpoint" "$REPO_ENDPOINT")
      forcePathStyle: true
      credentialsSecretRef: {name: repo-s3}
  immutability: {enabled: false}
  passwordSecretRef: {name: repo-s3, key: password}
---
apiVersion: fenice.io/v1alpha1
kind: BackupPolicy
metadata:
  name: standard
spec:
  schedule: "0 */6 * * *"
  timeZone: Europe/Rome
  repositories: [s3-backups]
  retention: {keepLast: 4}
  rules: {minCopies: 1, minDistinctProviders: 1}
  walArchiving: {enabled: true, archiveTimeout: 60s}
EOF
sed -e "0,/^  name: studio-rossi$/s//  name: $TENANT/" -e "s/^  namespace: invoicing$/  namespace: $NAMESPACE/" \
  -e 's/primarySite: westpole-rome/primarySite: standby/' -e 's/- site: azure-italynorth/- site: standby/' \
  manifests/examples/tenants.yaml | sed '/^---$/,$d' | primary apply --validate="$VALIDATE" -f -

step "5. The repository is reachable, the tenant's stack runs at the standby"
primary wait backuprepository/s3-backups --for=condition=Reachable --timeout="$TIMEOUT"
primary wait -n "$NAMESPACE" "invoicingtenant/$TENANT" --timeout="$TIMEOUT" \
  --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'="$WAIT_REASON"
standby get -n "$NAMESPACE" deployments,statefulsets,services,ingresses,networkpolicies -l "fenice.io/tenant=$TENANT"

step "6. A backup, run as a Job at the standby"
backup="$TENANT-$(date -u +%Y%m%d-%H%M%S)"
primary create --validate="$VALIDATE" -f - <<EOF
apiVersion: fenice.io/v1alpha1
kind: Backup
metadata: {name: $backup, namespace: $NAMESPACE}
spec: {tenant: $TENANT, trigger: Manual}
EOF
primary wait -n "$NAMESPACE" "backup/$backup" --timeout="$TIMEOUT" --for=jsonpath='{.status.job}'
primary get -n "$NAMESPACE" "backup/$backup" -o jsonpath='{.status.job}{"\n"}'

step "What to watch"
cat <<EOF
  kubectl --context $PRIMARY_CONTEXT get invoicingtenants,backups -n $NAMESPACE -w
  kubectl --context $PRIMARY_CONTEXT get events -n $NAMESPACE --field-selector involvedObject.name=$TENANT
  kubectl --context $STANDBY_CONTEXT get jobs,pods -n $NAMESPACE -l fenice.io/tenant=$TENANT
  kubectl --context $STANDBY_CONTEXT logs -n $NAMESPACE job/backup-$backup
Remove it all: kubectl --context $PRIMARY_CONTEXT delete invoicingtenant -n $NAMESPACE $TENANT (its objects at the
standby go with it; its backups stay in s3://$REPO_BUCKET/fenice).
EOF
