#!/usr/bin/env python3
"""Writes a data set shaped like a set of invoicing tenants, for benchmarks.

Per tenant: a SQL dump (compressible text), FatturaPA XML invoices (many small
files), scanned PDFs (incompressible) and near-duplicate PDFs (a copy with a few
bytes changed). `--mutate` changes about 2% of the files of an existing set, as
a day of work would: new invoices, a grown dump, a replaced scan.
"""
import argparse
import os
import random


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def dump(rng, rows, start=0):
    lines = []
    for i in range(start, start + rows):
        amount = rng.randint(100, 999999) / 100
        lines.append(
            f"INSERT INTO invoices (id, series, number, customer_vat, amount, issued) VALUES "
            f"({i}, 'A', {i}, 'IT{rng.randint(10**10, 10**11 - 1)}', {amount:.2f}, '2026-{1 + i % 12:02d}-{1 + i % 28:02d}');\n"
        )
    return "".join(lines).encode()


def invoice(rng, vat, n):
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<p:FatturaElettronica versione="FPR12" '
        f'xmlns:p="http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2">'
        f"<FatturaElettronicaHeader><DatiTrasmissione><IdTrasmittente><IdPaese>IT</IdPaese>"
        f"<IdCodice>{vat}</IdCodice></IdTrasmittente><ProgressivoInvio>{n:05d}</ProgressivoInvio>"
        f"<FormatoTrasmissione>FPR12</FormatoTrasmissione></DatiTrasmissione></FatturaElettronicaHeader>"
        f"<FatturaElettronicaBody><DatiGenerali><DatiGeneraliDocumento><TipoDocumento>TD01</TipoDocumento>"
        f"<Divisa>EUR</Divisa><Data>2026-11-{1 + n % 28:02d}</Data><Numero>{n}</Numero>"
        f"<ImportoTotaleDocumento>{rng.randint(100, 99999) / 100:.2f}</ImportoTotaleDocumento>"
        f"</DatiGeneraliDocumento></DatiGenerali>"
        + "".join(
            f"<DettaglioLinee><NumeroLinea>{k}</NumeroLinea><Descrizione>Consulenza professionale "
            f"{rng.randint(1, 10**6)}</Descrizione><PrezzoTotale>{rng.randint(1, 9999)}.00</PrezzoTotale></DettaglioLinee>"
            for k in range(1, 1 + rng.randint(3, 12))
        )
        + "</FatturaElettronicaBody></p:FatturaElettronica>\n"
    ).encode()


def generate(root, tenants, seed):
    rng = random.Random(seed)
    for t in range(tenants):
        base = os.path.join(root, f"tenant-{t:03d}")
        vat = f"{10**10 + t * 7919:011d}"
        write(os.path.join(base, "db", "dump.sql"), dump(rng, 110_000))
        for n in range(1000):
            write(os.path.join(base, "documents", "xml", f"IT{vat}_{n:05d}.xml"), invoice(rng, vat, n))
        scans = []
        for n in range(5):
            data = rng.randbytes(3 * 1024 * 1024)
            scans.append(data)
            write(os.path.join(base, "documents", "scans", f"scan-{n}.pdf"), data)
        for n in range(2):
            copy = bytearray(scans[n])
            pos = rng.randrange(len(copy) - 1024)
            copy[pos : pos + 1024] = rng.randbytes(1024)
            write(os.path.join(base, "documents", "scans", f"scan-{n}-signed.pdf"), bytes(copy))


def mutate(root, seed):
    rng = random.Random(seed)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    chosen = rng.sample(files, max(1, len(files) * 2 // 100))
    for path in chosen:
        if path.endswith(".sql"):
            with open(path, "ab") as f:
                f.write(dump(rng, 2000, start=10**6))
        elif path.endswith(".pdf"):
            write(path, rng.randbytes(os.path.getsize(path)))
        else:
            write(path, invoice(rng, "99999999999", rng.randint(0, 99999)))
    print(f"changed {len(chosen)} of {len(files)} files")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--tenants", type=int, default=24)
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--mutate", action="store_true")
    args = parser.parse_args()
    if args.mutate:
        mutate(args.root, args.seed + 1)
    else:
        generate(args.root, args.tenants, args.seed)


if __name__ == "__main__":
    main()
