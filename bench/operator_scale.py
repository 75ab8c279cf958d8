#!/usr/bin/env python3
"""Scale benchmark of `fenice operator` against `fenice apiserver`.

Loads N InvoicingTenants (38,000 by default: every professional of the 2023
incident as a tenant) into the in-memory API server, with the Site, the
BackupPolicy and the two BackupRepositories they name, then starts the
operator and measures:

- the time from the operator's start until every tenant carries a status for
  its generation (reconciled),
- the operator's resident memory once settled, and its peak,
- the operator's CPU use while idle, and the reconciles it ran meanwhile (a
  hot requeue loop shows here).

The tenants' Site is a Kubernetes site: the operator judges each tenant and
writes its status, but starts no stack (that is what the Local driver does,
one PostgreSQL per tenant, which no single machine holds 38,000 times).

    python3 bench/operator_scale.py --fenice target/release/fenice [--tenants N] [--idle-seconds S]

SCALE_LOG_DIR=DIR keeps the operator's and the API server's logs there.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

NAMESPACE = "invoicing"


def request(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=300) as response:
        return json.loads(response.read() or b"{}")


def start(command, lines):
    """Starts a process and returns it with the first `lines` lines of its stdout.
    Its stderr goes to $SCALE_LOG_DIR/<command>.log when that is set."""
    logs = os.environ.get("SCALE_LOG_DIR")
    stderr = open(os.path.join(logs, command[1] + ".log"), "w") if logs else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return process, [process.stdout.readline().strip() for _ in range(lines)]


def address(line, prefix):
    if not line.startswith(prefix):
        sys.exit(f"unexpected output {line!r}: expected {prefix!r}")
    return line[len(prefix):]


def tenant(i):
    name = f"tenant-{i:05d}"
    channel = lambda site: {
        "site": site, "kind": "SDICoop", "endpoint": f"https://sdi-{site}.example.it/ws",
        "environment": "Production",
        "certificateSecretRef": {"name": f"sdi-{site}", "key": "tls.crt"},
        "privateKeySecretRef": {"name": f"sdi-{site}", "key": "tls.key"},
    }
    return {
        "apiVersion": "fenice.io/v1alpha1", "kind": "InvoicingTenant",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "displayName": f"Studio {i}", "vatNumber": f"{i:011d}", "tier": ["Gold", "Silver", "Bronze"][i % 3],
            "primarySite": "westpole-rome", "objectives": {"rpo": "15m", "rto": "1h"},
            "backupPolicy": "standard",
            "sdi": {"channels": [channel("westpole-rome"), channel("azure-italynorth")]},
        },
    }


def fixtures(work):
    repository = lambda name, provider: {
        "apiVersion": "fenice.io/v1alpha1", "kind": "BackupRepository", "metadata": {"name": name},
        "spec": {
            "provider": provider,
            "storage": {"type": "Filesystem", "filesystem": {"path": os.path.join(work, name)}},
            "immutability": {"enabled": False},
            "passwordSecretRef": {"name": "repo-password", "key": "password"},
        },
    }
    return [
        ("/api/v1/namespaces", {"metadata": {"name": "fenice-system"}}),
        ("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}),
        ("/apis/fenice.io/v1alpha1/sites", {
            "apiVersion": "fenice.io/v1alpha1", "kind": "Site", "metadata": {"name": "westpole-rome"},
            "spec": {"provider": "Westpole", "region": "rome", "role": "Primary",
                     "cluster": {"driver": "Kubernetes", "inCluster": True}},
        }),
        ("/apis/fenice.io/v1alpha1/backuprepositories", repository("azure-backups", "Azure")),
        ("/apis/fenice.io/v1alpha1/backuprepositories", repository("ovh-backups", "Ovhcloud")),
        ("/apis/fenice.io/v1alpha1/backuppolicies", {
            "apiVersion": "fenice.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "standard"},
            "spec": {
                "schedule": "0 1 * * *", "timeZone": "Europe/Rome",
                "repositories": ["azure-backups", "ovh-backups"],
                "retention": {"keepDaily": 14},
                "rules": {"minCopies": 2, "minDistinctProviders": 2, "forbidPrimaryProvider": True,
                          "requireImmutable": False},
            },
        }),
    ]


def metrics_of(base, name):
    """Every controller's value of the counter `name`."""
    with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return {c: float(v) for c, v in re.findall(rf'^{name}{{controller="([^"]+)"}} (\S+)$', text, re.M)}


def metric(base, name, controller):
    return metrics_of(base, name).get(controller, 0.0)


def reconciled(base):
    listed = request(base, "GET", f"/apis/fenice.io/v1alpha1/namespaces/{NAMESPACE}/invoicingtenants")
    done = sum(
        1 for t in listed["items"]
        if t.get("status", {}).get("observedGeneration") == t["metadata"].get("generation")
    )
    return done


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # MiB
    return 0.0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fenice", required=True)
    parser.add_argument("--tenants", type=int, default=38000)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds to wait for all tenants")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="fenice-scale-")
    apiserver = operator = None
    try:
        kubeconfig = os.path.join(work, "kubeconfig")
        apiserver, out = start([args.fenice, "apiserver", "--kubeconfig-out", kubeconfig], 1)
        api = "http://" + address(out[0], "listening on ")
        for path, body in fixtures(work):
            request(api, "POST", path, body)
        started = time.monotonic()
        path = f"/apis/fenice.io/v1alpha1/namespaces/{NAMESPACE}/invoicingtenants"
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: request(api, "POST", path, tenant(i)), range(1, args.tenants + 1)))
        loaded = time.monotonic() - started
        print(f"loaded {args.tenants} tenants in {loaded:.1f} s ({args.tenants / loaded:.0f}/s)", flush=True)

        started = time.monotonic()
        operator, out = start([
            args.fenice, "operator", "--kubeconfig", kubeconfig, "--operator-namespace", "fenice-system",
            "--identity", "bench", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
            "--state-dir", work,
        ], 2)
        metrics = "http://" + address(out[1], "metrics on ")
        deadline = started + args.timeout
        while metric(metrics, "fenice_reconciles_total", "invoicingtenant") < args.tenants:
            if time.monotonic() > deadline or operator.poll() is not None:
                sys.exit("the operator did not reconcile every tenant")
            time.sleep(0.5)
        done = reconciled(api)
        while done < args.tenants:
            if time.monotonic() > deadline:
                sys.exit(f"only {done} of {args.tenants} tenants reconciled")
            time.sleep(2)
            done = reconciled(api)
        took = time.monotonic() - started
        print(f"all {args.tenants} tenants reconciled {took:.1f} s after the operator started "
              f"({args.tenants / took:.0f}/s)", flush=True)

        time.sleep(10)
        before = metrics_of(metrics, "fenice_reconciles_total")
        cpu_before = cpu_seconds(operator.pid)
        time.sleep(args.idle_seconds)
        cpu = cpu_seconds(operator.pid) - cpu_before
        after = metrics_of(metrics, "fenice_reconciles_total")
        idle_reconciles = ", ".join(f"{c} {after[c] - before.get(c, 0):.0f}" for c in sorted(after))
        errors = metric(metrics, "fenice_reconcile_errors_total", "invoicingtenant")
        rss, peak = proc_status(operator.pid, "VmRSS"), proc_status(operator.pid, "VmHWM")
        api_rss = proc_status(apiserver.pid, "VmRSS")
        print()
        print("| measure | value |")
        print("|---|---:|")
        print(f"| tenants | {args.tenants} |")
        print(f"| operator start to all reconciled | {took:.1f} s |")
        print(f"| reconcile errors | {errors:.0f} |")
        print(f"| operator RSS settled / peak | {rss:.0f} / {peak:.0f} MiB |")
        print(f"| operator CPU while idle ({args.idle_seconds} s) | {100 * cpu / args.idle_seconds:.2f} % of a core |")
        print(f"| reconciles while idle | {idle_reconciles} |")
        print(f"| in-memory API server RSS | {api_rss:.0f} MiB |")
    finally:
        for process in (operator, apiserver):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
