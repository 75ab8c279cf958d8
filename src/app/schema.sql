-- The reference invoicing app's schema (version 2). One database per tenant.
-- A database written by version 1 is brought to version 2 by MIGRATE_FROM_1
-- (src/app/schema.rs) when the app opens it.

-- Key/value facts about this database: schema_version, tenant, vat, company.
CREATE TABLE IF NOT EXISTS fenice_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Invoice numbering: one row per series (e.g. '2026', 'A2026'); numbers run
-- 1, 2, 3… with no gap and no duplicate.
CREATE TABLE IF NOT EXISTS series (
    name        text PRIMARY KEY,
    last_number bigint NOT NULL DEFAULT 0 CHECK (last_number >= 0)
);

-- The progressive in file names IT<VAT>_<progressive>.xml: one counter per
-- tenant across all series, written as 5 base-36 characters (00001…ZZZZZ).
CREATE TABLE IF NOT EXISTS file_progressive (
    id   integer PRIMARY KEY CHECK (id = 1),
    last bigint NOT NULL CHECK (last >= 0)
);

CREATE TABLE IF NOT EXISTS invoices (
    series         text NOT NULL REFERENCES series (name),
    number         bigint NOT NULL CHECK (number > 0),
    issue_date     date NOT NULL,
    format         text NOT NULL CHECK (format IN ('FPR12', 'FPA12')),
    customer_vat   text NOT NULL,
    customer_name  text NOT NULL,
    recipient_code text NOT NULL,
    description    text NOT NULL,
    taxable_cents  bigint NOT NULL,
    vat_cents      bigint NOT NULL,
    file_name      text NOT NULL UNIQUE,
    xml_sha256     text NOT NULL,
    -- pending → sent (sdi_id set) → done (a final receipt arrived)
    queue_state    text NOT NULL DEFAULT 'pending' CHECK (queue_state IN ('pending', 'sent', 'done')),
    -- SdI numbers its identifiers per environment: a drill's copy holds
    -- production's identifiers and is handed its own by SdI's test endpoint.
    sdi_environment text NOT NULL DEFAULT 'production' CHECK (sdi_environment IN ('production', 'test')),
    sdi_id         text,
    sent_at        timestamptz,
    sent_epoch     bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (series, number),
    UNIQUE (sdi_environment, sdi_id),
    CHECK ((queue_state = 'pending') = (sdi_id IS NULL))
);

CREATE INDEX IF NOT EXISTS invoices_queue ON invoices (queue_state) WHERE queue_state <> 'done';

-- The invoice documents themselves, so that the database (and its WAL) carries
-- everything: a point-in-time recovery rebuilds the documents directory from
-- here. Written in the transaction that issues the invoice.
CREATE TABLE IF NOT EXISTS documents (
    file_name text PRIMARY KEY REFERENCES invoices (file_name),
    content   bytea NOT NULL
);

-- Receipts from SdI: RC delivered, NS rejected, MC not delivered, NE outcome
-- from a public body, DT term passed, AT could not be delivered.
CREATE TABLE IF NOT EXISTS receipts (
    sdi_environment text NOT NULL DEFAULT 'production' CHECK (sdi_environment IN ('production', 'test')),
    sdi_id      text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('RC', 'NS', 'MC', 'NE', 'DT', 'AT')),
    received_at timestamptz NOT NULL,
    detail      text NOT NULL DEFAULT '',
    PRIMARY KEY (sdi_environment, sdi_id, kind)
);

-- The SdI channel this site transmits through: its endpoint and when its
-- certificate expires. One row.
CREATE TABLE IF NOT EXISTS channel (
    id                  integer PRIMARY KEY CHECK (id = 1),
    endpoint            text NOT NULL,
    certificate_expires date NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
