#!/usr/bin/env bash
# Benchmark of a tenant's backup and restore (`fenice agent`) against the
# baseline `pg_dump | zstd` to a local file (and `tar | zstd` for the
# documents), in one run on the same tenant: seconds, MB/s of database,
# stored size and peak memory.
#
#   bash bench/tenant.sh [INVOICES]      # 100000 by default
#
# Needs PostgreSQL (scripts/prerequisites.sh) and zstd (apt-get install zstd);
# builds fenice in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

INVOICES=${1:-100000}
# FENICE_BIN=path/to/fenice skips the release build (to check this script quickly).
if [ -z "${FENICE_BIN:-}" ]; then
  cargo build --release --quiet
  FENICE_BIN=$(realpath "${CARGO_TARGET_DIR:-target}")/release/fenice
fi
FENICE=$FENICE_BIN
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
WORK=$(mktemp -d /tmp/fenice-tenant-bench.XXXXXX)
chmod 755 "$WORK"
PGDATA=$WORK/pg
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# PostgreSQL refuses to run as root: then it runs as the postgres user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK; PostgreSQL at $URL (stop: $PG_BIN/pg_ctl -D $PGDATA stop)"; return; fi
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$PGDATA" "$WORK/sock"
[ "$(id -u)" = 0 ] && chown postgres: "$PGDATA" "$WORK/sock"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust --locale=C --encoding=UTF8 --no-sync >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/sock/postgres.log" -w \
  -o "-p $PORT -k $WORK/sock -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB" start >/dev/null
URL=postgres://postgres@127.0.0.1:$PORT
psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

echo "generating a tenant of $INVOICES invoices"
psql "$URL/postgres" -c "CREATE DATABASE tenant"
psql "$URL/tenant" -f src/app/schema.sql >/dev/null
psql "$URL/tenant" >/dev/null <<SQL
CREATE FUNCTION b36(n bigint) RETURNS text LANGUAGE sql IMMUTABLE AS \$\$
  SELECT lpad(string_agg(substr('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ', ((n / (36::bigint ^ p)::bigint) % 36 + 1)::int, 1), '' ORDER BY p DESC), 5, '0')
  FROM generate_series(0, 4) p
\$\$;
INSERT INTO fenice_meta VALUES ('schema_version', '1'), ('tenant', 'bench'), ('vat', '01234567890'), ('company', 'Studio Bench S.r.l.');
INSERT INTO series VALUES ('2026', $INVOICES);
INSERT INTO file_progressive VALUES (1, $INVOICES);
CREATE TEMP TABLE docs AS
  SELECT n, 'IT01234567890_' || b36(n) || '.xml' AS file_name,
    convert_to(format(
      '<?xml version="1.0" encoding="UTF-8"?>\n<p:FatturaElettronica versione="FPR12" xmlns:p="http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2">'
      '<FatturaElettronicaHeader><DatiTrasmissione><IdTrasmittente><IdPaese>IT</IdPaese><IdCodice>01234567890</IdCodice></IdTrasmittente>'
      '<ProgressivoInvio>%s</ProgressivoInvio><FormatoTrasmissione>FPR12</FormatoTrasmissione><CodiceDestinatario>ABC1234</CodiceDestinatario></DatiTrasmissione>'
      '<CedentePrestatore><DatiAnagrafici><IdFiscaleIVA><IdPaese>IT</IdPaese><IdCodice>01234567890</IdCodice></IdFiscaleIVA><Anagrafica><Denominazione>Studio Bench S.r.l.</Denominazione></Anagrafica><RegimeFiscale>RF01</RegimeFiscale></DatiAnagrafici>'
      '<Sede><Indirizzo>Via Roma 1</Indirizzo><CAP>00100</CAP><Comune>Roma</Comune><Provincia>RM</Provincia><Nazione>IT</Nazione></Sede></CedentePrestatore>'
      '<CessionarioCommittente><DatiAnagrafici><IdFiscaleIVA><IdPaese>IT</IdPaese><IdCodice>%s</IdCodice></IdFiscaleIVA><Anagrafica><Denominazione>Cliente %s</Denominazione></Anagrafica></DatiAnagrafici>'
      '<Sede><Indirizzo>Via %s</Indirizzo><CAP>20100</CAP><Comune>Milano</Comune><Provincia>MI</Provincia><Nazione>IT</Nazione></Sede></CessionarioCommittente></FatturaElettronicaHeader>'
      '<FatturaElettronicaBody><DatiGenerali><DatiGeneraliDocumento><TipoDocumento>TD01</TipoDocumento><Divisa>EUR</Divisa><Data>%s</Data><Numero>2026/%s</Numero>'
      '<ImportoTotaleDocumento>%s</ImportoTotaleDocumento></DatiGeneraliDocumento></DatiGenerali><DatiBeniServizi><DettaglioLinee><NumeroLinea>1</NumeroLinea>'
      '<Descrizione>Consulenza %s</Descrizione><PrezzoUnitario>%s</PrezzoUnitario><PrezzoTotale>%s</PrezzoTotale><AliquotaIVA>22.00</AliquotaIVA></DettaglioLinee>'
      '<DatiRiepilogo><AliquotaIVA>22.00</AliquotaIVA><ImponibileImporto>%s</ImponibileImporto><Imposta>%s</Imposta></DatiRiepilogo></DatiBeniServizi></FatturaElettronicaBody></p:FatturaElettronica>\n',
      b36(n), lpad((n * 7919 % 99999999999)::text, 11, '0'), n, md5(n::text), date '2026-01-01' + n % 300, n,
      (12200 + n % 50000) / 100.0, md5((n * 3)::text), (10000 + n % 50000) / 100.0, (10000 + n % 50000) / 100.0,
      (10000 + n % 50000) / 100.0, (2200 + n % 11000) / 100.0), 'UTF8') AS content
  FROM generate_series(1, $INVOICES) n;
INSERT INTO invoices (series, number, issue_date, format, customer_vat, customer_name, recipient_code, description,
                      taxable_cents, vat_cents, file_name, xml_sha256, queue_state, sdi_id, sent_at, sent_epoch)
  SELECT '2026', n, date '2026-01-01' + n % 300, 'FPR12', lpad((n * 7919 % 99999999999)::text, 11, '0'), 'Cliente ' || n,
         'ABC1234', 'Consulenza ' || md5((n * 3)::text), 10000 + n % 50000, 2200 + n % 11000, file_name,
         encode(sha256(content), 'hex'), 'done', n::text, timestamptz '2026-01-01' + n * interval '1 minute', 1
  FROM docs;
INSERT INTO documents SELECT file_name, content FROM docs;
INSERT INTO receipts SELECT n::text, 'RC', timestamptz '2026-01-01' + n * interval '1 minute', '' FROM docs;
DROP FUNCTION b36;
SQL
mkdir -p "$WORK/documents"
psql "$URL/tenant" -At -c "COPY (SELECT file_name, encode(content, 'base64') FROM documents) TO STDOUT" | python3 -c '
import base64, os, sys
out = sys.argv[1]
for line in sys.stdin:
    name, content = line.rstrip("\n").split("\t")
    with open(os.path.join(out, name), "wb") as f:
        f.write(base64.b64decode(content.replace("\\n", "")))
' "$WORK/documents"
DB_BYTES=$(psql "$URL/tenant" -At -c "SELECT pg_database_size('tenant')")
DOC_BYTES=$(du -sb "$WORK/documents" | cut -f1)
echo "database $((DB_BYTES / 1048576)) MiB, documents $((DOC_BYTES / 1048576)) MiB in $INVOICES files"

export FENICE_PASSWORD=bench PATH="$PG_BIN:$PATH"
RESULTS=$WORK/results.tsv
: >"$RESULTS"
source bench/measure.sh

"$FENICE" repo --repo "$WORK/repo" init >/dev/null
psql "$URL/postgres" -c "CREATE DATABASE baseline_restored"
measure "backup, database" "pg_dump | zstd" bash -o pipefail -c "pg_dump -Fc -Z0 -d $URL/tenant | zstd -q -3 -o $WORK/tenant.dump.zst"
measure "backup, documents" "tar | zstd" bash -o pipefail -c "tar -C $WORK/documents -cf - . | zstd -q -3 -o $WORK/documents.tar.zst"
measure "backup, both" "fenice agent" bash -o pipefail -c "$FENICE agent backup --tenant bench --db $URL/tenant --repo $WORK/repo"
measure "backup again, unchanged" "fenice agent" bash -o pipefail -c "$FENICE agent backup --tenant bench --db $URL/tenant --repo $WORK/repo"
measure "restore, database" "zstd | pg_restore" bash -o pipefail -c "zstd -q -dc $WORK/tenant.dump.zst | pg_restore --no-owner --single-transaction -d $URL/baseline_restored"
mkdir -p "$WORK/documents-baseline"
measure "restore, documents" "zstd | tar" bash -o pipefail -c "zstd -q -dc $WORK/documents.tar.zst | tar -C $WORK/documents-baseline -xf -"
measure "restore, both, verified" "fenice agent" bash -o pipefail -c "$FENICE agent restore --tenant bench --db $URL/fenice_restored --documents $WORK/documents-fenice --repo $WORK/repo"

BASELINE_STORED=$(($(stat -c %s "$WORK/tenant.dump.zst") + $(stat -c %s "$WORK/documents.tar.zst")))
REPO_STORED=$(du -sb "$WORK/repo" | cut -f1)
python3 - "$RESULTS" "$DB_BYTES" "$BASELINE_STORED" "$REPO_STORED" "$INVOICES" <<'PY'
import sys
path, db_bytes, baseline, repo, invoices = sys.argv[1], *map(int, sys.argv[2:])
rows = [line.rstrip("\n").split("\t") for line in open(path)]
print(f"\ntenant of {invoices} invoices, database {db_bytes / 2**20:.0f} MiB\n")
print("| step | tool | seconds | database MB/s | peak memory |")
print("| --- | --- | ---: | ---: | ---: |")
for label, tool, seconds, peak in rows:
    rate = db_bytes / 1e6 / float(seconds)
    shown = tool.replace("|", "\\|")
    print(f"| {label} | {shown} | {float(seconds):.2f} | {rate:.1f} | {int(peak) / 1024:.0f} MiB |")
seconds = {(l, t): float(s) for l, t, s, _ in rows}
base = seconds[("backup, database", "pg_dump | zstd")]
both = seconds[("backup, database", "pg_dump | zstd")] + seconds[("backup, documents", "tar | zstd")]
ours = seconds[("backup, both", "fenice agent")]
print(f"\nfenice backup / pg_dump|zstd: {ours / base:.2f}x (target <= 1.3x); "
      f"/ (pg_dump|zstd + tar|zstd): {ours / both:.2f}x")
print(f"stored: fenice repository {repo / 2**20:.1f} MiB, baseline files {baseline / 2**20:.1f} MiB")
PY
