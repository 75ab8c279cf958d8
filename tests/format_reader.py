#!/usr/bin/env python3
"""An independent reader of the Fenice repository format, version 1.

Written from docs/repository-format.md alone (not from fenice's sources), to show
that the document is enough to get data back without fenice. It reads a
repository kept in a directory (a filesystem store).

    python3 tests/format_reader.py REPO_DIR (--password-file F | --recovery-key-file F)
                                   [--rebuild-index] COMMAND

    list                     one JSON line per snapshot, oldest first
    cat SNAPSHOT PATH        the bytes of one file of a snapshot, on stdout; SNAPSHOT
                             is an id, a unique id prefix or `latest`, PATH starts
                             with the root node's name (`docs/a.xml` or `/docs/a.xml`)
    verify                   open every blob of every pack, every index and snapshot
                             object, and check the index against the packs and
                             every snapshot's trees against the index
    blobs                    one JSON line per blob of every pack header: pack, type,
                             offset, length, rawLength and framing (stored or zstd)

Exit status: 0 on success, 1 on any error (wrong password included), 2 on usage
errors, 3 when a Python package is missing. Needs Python 3.11 and these PyPI packages (scripts/prerequisites.sh pins
them): blake3, PyNaCl, argon2-cffi, zstandard.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import sys
from dataclasses import dataclass

try:
    import blake3
    import zstandard
    from argon2.low_level import Type as Argon2Type
    from argon2.low_level import hash_secret_raw
    from nacl import bindings as sodium
    from nacl.exceptions import CryptoError
except ImportError as err:  # pragma: no cover - reported to the caller
    print(
        f"format_reader: missing Python package ({err}); run scripts/prerequisites.sh",
        file=sys.stderr,
    )
    sys.exit(3)

FORMAT_VERSION = 1

# Key derivation contexts ("Key derivation", "Key files").
CTX_ID_KEY = "fenice.io 2026-11 repository blob id v1"
CTX_ENCRYPTION_KEY = "fenice.io 2026-11 repository encryption v1"
CTX_X25519_WRAP = "fenice.io 2026-11 x25519 key wrap v1"

# Associated data of sealed values ("Sealing").
AAD_PACK_HEADER = b"fenice.io pack header v1"
AAD_INDEX = b"fenice.io index v1"
AAD_SNAPSHOT = b"fenice.io snapshot v1"
AAD_MASTER_KEY = b"fenice.io master key v1"

NONCE_LEN = 24
TAG_LEN = 16

RECOVERY_PREFIX = "fenice-recovery-1:"
RECIPIENT_PREFIX = "fenice-recipient-1:"

BLOB_TYPES = {0: "data", 1: "tree"}
PACK_HEADER_VERSION = 1
PACK_ENTRY = struct.Struct("<BII32s")  # type, stored length, raw length, id

OBJECT_ID = re.compile(r"^[0-9a-f]{64}$")


class FormatError(Exception):
    """Anything that makes the repository unreadable; printed, exit status 1."""


# --- primitives -----------------------------------------------------------------


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def derive_key(context: str, material: bytes) -> bytes:
    return blake3.blake3(material, derive_key_context=context).digest()


def keyed_hash(key: bytes, data: bytes) -> bytes:
    return blake3.blake3(data, key=key).digest()


def open_sealed(value: bytes, key: bytes, aad: bytes, what: str) -> bytes:
    """nonce (24) || ciphertext || tag (16), XChaCha20-Poly1305."""
    if len(value) < NONCE_LEN + TAG_LEN:
        raise FormatError(f"{what}: sealed value is {len(value)} bytes, shorter than nonce and tag")
    nonce, ciphertext = value[:NONCE_LEN], value[NONCE_LEN:]
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except CryptoError:
        raise FormatError(f"{what}: authentication failed (wrong key, or the value was altered)") from None


def zstd_decompress(data: bytes, what: str, limit: int | None = None) -> bytes:
    """Decompresses zstd frames (one or more, with or without a content size)."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        if limit is None:
            out = reader.read()
        else:
            out = reader.read(limit + 1)
            if len(out) > limit:
                raise FormatError(f"{what}: decompresses to more than the {limit} bytes expected")
    except zstandard.ZstdError as err:
        raise FormatError(f"{what}: not a valid zstd frame: {err}") from None
    return out


def parse_json(data: bytes, what: str):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{what}: not valid JSON: {err}") from None


def from_hex(text, length: int, what: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]*", text):
        raise FormatError(f"{what}: not a hex string")
    raw = bytes.fromhex(text)
    if length and len(raw) != length:
        raise FormatError(f"{what}: {len(raw)} bytes, expected {length}")
    return raw


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def time_key(text) -> tuple[int, int]:
    """An RFC 3339 time as (seconds since the epoch, nanoseconds), for ordering.

    Plain string comparison is wrong when the number of fraction digits varies
    ("…:11Z" sorts after "…:11.3Z")."""
    import calendar

    m = _RFC3339.match(text or "")
    if not m:
        raise FormatError(f"not an RFC 3339 time: {text!r}")
    y, mo, d, h, mi, s, frac, off = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    if off not in ("Z", "z"):
        sign = 1 if off[0] == "+" else -1
        secs -= sign * (int(off[1:3]) * 3600 + int(off[4:6]) * 60)
    nanos = int((frac or "0")[:9].ljust(9, "0"))
    return secs, nanos


# --- store ----------------------------------------------------------------------


class DirStore:
    """A filesystem store: object keys are relative paths under the directory."""

    def __init__(self, root: str):
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def read(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FormatError(f"object {key} is missing") from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except FileNotFoundError:
            raise FormatError(f"object {key} is missing") from None
        if len(data) != length:
            raise FormatError(f"object {key}: {offset}+{length} is past its end")
        return data

    def size(self, key: str) -> int:
        return os.path.getsize(self._path(key))

    def list_ids(self, folder: str) -> list[str]:
        """Object ids in keys/, index/, snapshots/ (flat) or data/ (two levels).

        Keys whose last part is not 64 hex digits (temp files) are ignored."""
        base = self._path(folder)
        if not os.path.isdir(base):
            return []
        found = []
        if folder == "data":
            for sub in sorted(os.listdir(base)):
                subdir = os.path.join(base, sub)
                if not os.path.isdir(subdir):
                    continue
                for name in sorted(os.listdir(subdir)):
                    if OBJECT_ID.match(name) and os.path.isfile(os.path.join(subdir, name)):
                        found.append(name)
        else:
            for name in sorted(os.listdir(base)):
                if OBJECT_ID.match(name) and os.path.isfile(os.path.join(base, name)):
                    found.append(name)
        return found


def pack_key(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


# --- repository -----------------------------------------------------------------


@dataclass(frozen=True)
class BlobLocation:
    pack: str
    type: str
    offset: int
    length: int
    raw_length: int


class Repository:
    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FormatError(f"{root}: not a directory")
        self.store = DirStore(root)
        self.config = self._read_config()
        self.id_key: bytes | None = None
        self.enc_key: bytes | None = None
        self.index: dict[bytes, list[BlobLocation]] = {}

    # -- config and keys

    def _read_config(self) -> dict:
        if not self.store.exists("config"):
            raise FormatError(f"{self.store.root}: no `config` object: not a fenice repository")
        config = parse_json(self.store.read("config"), "config")
        version = config.get("version") if isinstance(config, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FormatError(f"config: invalid format version {version!r}")
        if version > FORMAT_VERSION:
            raise FormatError(
                f"repository format version {version} is newer than this reader knows "
                f"({FORMAT_VERSION}): a newer reader is needed"
            )
        return config

    def _key_files(self) -> list[tuple[str, dict]]:
        files = []
        for kid in self.store.list_ids("keys"):
            data = self.store.read(f"keys/{kid}")
            doc = parse_json(data, f"keys/{kid}")
            if not isinstance(doc, dict):
                raise FormatError(f"keys/{kid}: not a JSON object")
            files.append((kid, doc))
        if not files:
            raise FormatError("the repository has no key files (keys/ is empty)")
        return files

    def _use_master_key(self, master: bytes, what: str) -> None:
        if len(master) != 32:
            raise FormatError(f"{what}: the master key is {len(master)} bytes, expected 32")
        self.id_key = derive_key(CTX_ID_KEY, master)
        self.enc_key = derive_key(CTX_ENCRYPTION_KEY, master)

    def unlock_with_passphrase(self, passphrase: str) -> str:
        password = passphrase.encode("utf-8")
        tried = 0
        for kid, doc in self._key_files():
            if doc.get("kind") != "passphrase":
                continue
            tried += 1
            kdf = doc.get("kdf") or {}
            try:
                salt = from_hex(doc.get("salt"), 0, f"keys/{kid} salt")
                wrapped = from_hex(doc.get("wrappedKey"), 0, f"keys/{kid} wrappedKey")
                kek = hash_secret_raw(
                    secret=password,
                    salt=salt,
                    time_cost=int(kdf["iterations"]),
                    memory_cost=int(kdf["memoryKib"]),
                    parallelism=int(kdf["parallelism"]),
                    hash_len=32,
                    type=Argon2Type.ID,
                    version=0x13,
                )
            except (KeyError, TypeError, ValueError) as err:
                raise FormatError(f"keys/{kid}: bad passphrase key file: {err}") from None
            if self._try_master_key(wrapped, kek, kid):
                return kid
        if tried == 0:
            raise FormatError("the repository has no passphrase key file")
        raise FormatError(f"wrong passphrase: it opens none of the {tried} passphrase key file(s)")

    def _try_master_key(self, wrapped: bytes, kek: bytes, kid: str) -> bool:
        """Opens a wrapped master key and adopts it; False if this key does not open it."""
        try:
            master = open_sealed(wrapped, kek, AAD_MASTER_KEY, f"keys/{kid}")
        except FormatError:
            return False
        self._use_master_key(master, f"keys/{kid}")
        return True

    def unlock_with_recovery_key(self, secret: bytes) -> str:
        public = sodium.crypto_scalarmult_base(secret)
        candidates = [(kid, doc) for kid, doc in self._key_files() if doc.get("kind") == "recipient"]
        if not candidates:
            raise FormatError("the repository has no recipient (recovery key) key file")
        # Files made for this recovery key first; the others are tried as well.
        candidates.sort(key=lambda kd: str(kd[1].get("recipient", "")).lower() != public.hex())
        for kid, doc in candidates:
            ephemeral = from_hex(doc.get("ephemeral"), 32, f"keys/{kid} ephemeral")
            recipient = from_hex(doc.get("recipient"), 32, f"keys/{kid} recipient")
            wrapped = from_hex(doc.get("wrappedKey"), 0, f"keys/{kid} wrappedKey")
            try:
                shared = sodium.crypto_scalarmult(secret, ephemeral)
            except Exception:  # an all-zero shared secret (low-order point)
                continue
            kek = derive_key(CTX_X25519_WRAP, shared + ephemeral + recipient)
            if self._try_master_key(wrapped, kek, kid):
                return kid
        raise FormatError(
            f"wrong recovery key: it opens none of the {len(candidates)} recipient key file(s) "
            f"(its public half is {RECIPIENT_PREFIX}{public.hex()})"
        )

    # -- content-addressed objects

    def read_object(self, key: str, object_id: str) -> bytes:
        data = self.store.read(key)
        actual = blake3_hex(data)
        if actual != object_id:
            raise FormatError(f"{key}: content hashes to {actual}, not to its name")
        return data

    # -- snapshots

    def snapshots(self) -> list[tuple[str, dict]]:
        result = []
        for sid in self.store.list_ids("snapshots"):
            data = self.read_object(f"snapshots/{sid}", sid)
            plain = open_sealed(data, self.enc_key, AAD_SNAPSHOT, f"snapshots/{sid}")
            doc = parse_json(zstd_decompress(plain, f"snapshots/{sid}"), f"snapshots/{sid}")
            if not isinstance(doc, dict) or not isinstance(doc.get("tree"), str):
                raise FormatError(f"snapshots/{sid}: no root tree")
            result.append((sid, doc))
        result.sort(key=lambda s: (time_key(s[1].get("time")), s[0]))
        return result

    def find_snapshot(self, selector: str) -> tuple[str, dict]:
        snaps = self.snapshots()
        if not snaps:
            raise FormatError("the repository has no snapshots")
        if selector == "latest":
            return snaps[-1]
        sel = selector.lower()
        matches = [s for s in snaps if s[0].startswith(sel)]
        if not matches:
            raise FormatError(f"no snapshot with id {selector!r}")
        if len(matches) > 1:
            raise FormatError(f"snapshot prefix {selector!r} is ambiguous: {len(matches)} snapshots match")
        return matches[0]

    # -- index

    def _add_location(self, blob_id: bytes, loc: BlobLocation) -> None:
        locs = self.index.setdefault(blob_id, [])
        if loc not in locs:
            locs.append(loc)

    def load_index(self) -> int:
        """The union of every index object; returns how many there were."""
        ids = self.store.list_ids("index")
        for iid in ids:
            for pack_id, entry in self.read_index_object(iid):
                self._add_location(entry[0], BlobLocation(pack_id, *entry[1:]))
        return len(ids)

    def read_index_object(self, iid: str):
        what = f"index/{iid}"
        data = self.read_object(what, iid)
        plain = open_sealed(data, self.enc_key, AAD_INDEX, what)
        doc = parse_json(zstd_decompress(plain, what), what)
        try:
            for pack in doc["packs"]:
                pack_id = pack["id"]
                if not isinstance(pack_id, str) or not OBJECT_ID.match(pack_id):
                    raise FormatError(f"{what}: bad pack id {pack_id!r}")
                for blob in pack["blobs"]:
                    if blob["type"] not in ("data", "tree"):
                        raise FormatError(f"{what}: unknown blob type {blob['type']!r}")
                    yield pack_id, (
                        from_hex(blob["id"], 32, f"{what} blob id"),
                        blob["type"],
                        int(blob["offset"]),
                        int(blob["length"]),
                        int(blob["rawLength"]),
                    )
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"{what}: unexpected layout ({err!r})") from None

    def read_pack_header(self, pack_id: str, pack: bytes | None = None) -> list[tuple[bytes, BlobLocation]]:
        """Reads the last 4 bytes, then the sealed header before them."""
        key = pack_key(pack_id)
        size = len(pack) if pack is not None else self.store.size(key)
        if size < 4:
            raise FormatError(f"{key}: {size} bytes, too short for a pack")
        tail = pack[-4:] if pack is not None else self.store.read_range(key, size - 4, 4)
        (header_len,) = struct.unpack("<I", tail)
        if header_len + 4 > size:
            raise FormatError(f"{key}: header length {header_len} is past the pack's start")
        start = size - 4 - header_len
        sealed = pack[start : size - 4] if pack is not None else self.store.read_range(key, start, header_len)
        header = open_sealed(sealed, self.enc_key, AAD_PACK_HEADER, f"{key} header")
        if not header or header[0] != PACK_HEADER_VERSION:
            raise FormatError(f"{key}: pack header version {header[:1].hex() or 'missing'}, expected 1")
        body = header[1:]
        if len(body) % PACK_ENTRY.size:
            raise FormatError(f"{key}: pack header length {len(header)} is not 1 + n * {PACK_ENTRY.size}")
        entries = []
        offset = 0
        for i in range(0, len(body), PACK_ENTRY.size):
            btype, stored, raw, blob_id = PACK_ENTRY.unpack_from(body, i)
            if btype not in BLOB_TYPES:
                raise FormatError(f"{key}: entry {i // PACK_ENTRY.size}: unknown blob type {btype}")
            entries.append((blob_id, BlobLocation(pack_id, BLOB_TYPES[btype], offset, stored, raw)))
            offset += stored
        if offset != start:
            raise FormatError(f"{key}: the header lists {offset} bytes of blobs, the pack holds {start}")
        return entries

    def rebuild_index(self) -> int:
        packs = self.store.list_ids("data")
        for pack_id in packs:
            for blob_id, loc in self.read_pack_header(pack_id):
                self._add_location(blob_id, loc)
        return len(packs)

    # -- blobs

    def open_blob_at(self, blob_id: bytes, sealed: bytes, loc: BlobLocation) -> bytes:
        what = f"blob {blob_id.hex()} in pack {loc.pack}"
        frame = open_sealed(sealed, self.enc_key, blob_id, what)
        if not frame:
            raise FormatError(f"{what}: empty frame")
        if frame[0] == 0:
            plain = frame[1:]
        elif frame[0] == 1:
            plain = zstd_decompress(frame[1:], what, limit=loc.raw_length)
        else:
            raise FormatError(f"{what}: unknown framing byte 0x{frame[0]:02x}")
        if len(plain) != loc.raw_length:
            raise FormatError(f"{what}: {len(plain)} bytes, the header says {loc.raw_length}")
        if keyed_hash(self.id_key, plain) != blob_id:
            raise FormatError(f"{what}: content does not match its id")
        return plain

    def load_blob(self, blob_id: bytes, want_type: str) -> bytes:
        locs = self.index.get(blob_id)
        if not locs:
            raise FormatError(f"{want_type} blob {blob_id.hex()} is in no pack the index knows")
        errors = []
        for loc in locs:  # a blob in several packs may be read from any of them
            if loc.type != want_type:
                errors.append(f"pack {loc.pack} holds it as a {loc.type} blob")
                continue
            try:
                sealed = self.store.read_range(pack_key(loc.pack), loc.offset, loc.length)
                return self.open_blob_at(blob_id, sealed, loc)
            except FormatError as err:
                errors.append(str(err))
        raise FormatError(f"{want_type} blob {blob_id.hex()}: " + "; ".join(errors))

    # -- trees

    def load_tree(self, tree_id_hex: str) -> list[dict]:
        tree_id = from_hex(tree_id_hex, 32, "tree id")
        doc = parse_json(self.load_blob(tree_id, "tree"), f"tree {tree_id_hex}")
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        if not isinstance(nodes, list):
            raise FormatError(f"tree {tree_id_hex}: no `nodes` list")
        return nodes

    def find_node(self, snapshot: dict, path: str) -> dict:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            raise FormatError("empty path: name a file of the snapshot")
        nodes = self.load_tree(snapshot["tree"])
        walked = []
        for i, part in enumerate(parts):
            walked.append(part)
            node = next((n for n in nodes if n.get("name") == part), None)
            if node is None:
                raise FormatError(f"/{'/'.join(walked)}: no such file or directory in the snapshot")
            if i == len(parts) - 1:
                return node
            if node.get("type") != "dir":
                raise FormatError(f"/{'/'.join(walked)}: not a directory")
            nodes = self.load_tree(node["subtree"])
        raise AssertionError("unreachable")

    def file_blobs(self, node: dict) -> list[bytes]:
        content = node.get("content") or []
        return [from_hex(b, 32, f"{node.get('name')}: content id") for b in content]


# --- recovery key text ----------------------------------------------------------


def parse_recovery_key(text: str) -> bytes:
    stripped = text.strip()
    if stripped[: len(RECOVERY_PREFIX)].lower() != RECOVERY_PREFIX:
        raise FormatError(f"the recovery key does not start with {RECOVERY_PREFIX}")
    body = re.sub(r"[\s-]", "", stripped[len(RECOVERY_PREFIX) :]).lower()
    if not re.fullmatch(r"[0-9a-f]{72}", body):
        raise FormatError("the recovery key is not 72 hex digits (32 key bytes and a 4-byte checksum)")
    raw = bytes.fromhex(body)
    secret, checksum = raw[:32], raw[32:]
    if blake3.blake3(secret).digest()[:4] != checksum:
        raise FormatError("the recovery key's checksum does not match: it was mistyped")
    return secret


def read_first_line(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise FormatError(f"{what} {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} {path}: not UTF-8") from None
    return text.split("\n", 1)[0].removesuffix("\r")


# --- commands -------------------------------------------------------------------


def cmd_list(repo: Repository, _args) -> int:
    out = sys.stdout
    for sid, snap in repo.snapshots():
        out.write(json.dumps({"id": sid, **snap}, sort_keys=True, ensure_ascii=False) + "\n")
    return 0


def cmd_cat(repo: Repository, args) -> int:
    sid, snap = repo.find_snapshot(args.snapshot)
    node = repo.find_node(snap, args.path)
    kind = node.get("type")
    if kind == "dir":
        raise FormatError(f"{args.path} is a directory: cat writes one file")
    if kind == "symlink":
        raise FormatError(f"{args.path} is a symbolic link to {node.get('target')!r}: cat writes one file")
    if kind != "file":
        raise FormatError(f"{args.path} is a {kind!r} node: cat writes one file")
    out = sys.stdout.buffer
    written = 0
    for blob_id in repo.file_blobs(node):
        chunk = repo.load_blob(blob_id, "data")
        out.write(chunk)
        written += len(chunk)
    out.flush()
    if isinstance(node.get("size"), int) and node["size"] != written:
        print(
            f"format_reader: warning: {args.path}: {written} bytes written, the tree says {node['size']}",
            file=sys.stderr,
        )
    return 0


def cmd_verify(repo: Repository, args) -> int:
    errors: list[str] = []

    def fail(msg: str) -> None:
        errors.append(msg)
        print(f"format_reader: error: {msg}", file=sys.stderr)

    # Every pack: name, header, every blob.
    in_packs: dict[tuple[str, bytes], BlobLocation] = {}
    packs = repo.store.list_ids("data")
    blobs = 0
    for pack_id in packs:
        key = pack_key(pack_id)
        try:
            pack = repo.read_object(key, pack_id)
            entries = repo.read_pack_header(pack_id, pack)
        except FormatError as err:
            fail(str(err))
            continue
        for blob_id, loc in entries:
            in_packs[(pack_id, blob_id)] = loc
            blobs += 1
            try:
                repo.open_blob_at(blob_id, pack[loc.offset : loc.offset + loc.length], loc)
            except FormatError as err:
                fail(str(err))
    # Stray files where packs belong.
    data_dir = os.path.join(repo.store.root, "data")
    if os.path.isdir(data_dir):
        for sub in os.listdir(data_dir):
            subdir = os.path.join(data_dir, sub)
            if os.path.isdir(subdir):
                for name in os.listdir(subdir):
                    if OBJECT_ID.match(name) and name[:2] != sub:
                        fail(f"data/{sub}/{name}: pack in the wrong folder")

    # Every index object, checked against the pack headers.
    indexes = repo.store.list_ids("index")
    for iid in indexes:
        try:
            for pack_id, (blob_id, btype, offset, length, raw) in repo.read_index_object(iid):
                loc = BlobLocation(pack_id, btype, offset, length, raw)
                repo._add_location(blob_id, loc)
                if in_packs.get((pack_id, blob_id)) != loc:
                    fail(f"index/{iid}: blob {blob_id.hex()} in pack {pack_id} does not match the pack header")
        except FormatError as err:
            fail(str(err))
    if args.rebuild_index:
        for (pack_id, blob_id), loc in in_packs.items():
            repo._add_location(blob_id, loc)

    # Every snapshot, and the trees and data blobs it needs.
    try:
        snaps = repo.snapshots()
    except FormatError as err:
        fail(str(err))
        snaps = []
    seen_trees: set[str] = set()

    def walk(tree_id: str, where: str) -> None:
        if tree_id in seen_trees:
            return
        seen_trees.add(tree_id)
        try:
            nodes = repo.load_tree(tree_id)
        except FormatError as err:
            fail(f"{where}: {err}")
            return
        for node in nodes:
            name = f"{where}/{node.get('name')}"
            if node.get("type") == "dir":
                walk(node.get("subtree", ""), name)
            elif node.get("type") == "file":
                try:
                    for blob_id in repo.file_blobs(node):
                        if not any(loc.type == "data" for loc in repo.index.get(blob_id, [])):
                            fail(f"{name}: data blob {blob_id.hex()} is in no indexed pack")
                except FormatError as err:
                    fail(str(err))

    for sid, snap in snaps:
        walk(snap["tree"], f"snapshot {sid[:8]}")

    print(
        f"format_reader: {len(packs)} packs, {blobs} blobs opened, {len(indexes)} index objects, "
        f"{len(snaps)} snapshots, {len(seen_trees)} trees; {len(errors)} errors",
        file=sys.stderr,
    )
    return 1 if errors else 0


def cmd_blobs(repo: Repository, _args) -> int:
    out = sys.stdout
    for pack_id in repo.store.list_ids("data"):
        pack = repo.read_object(pack_key(pack_id), pack_id)
        for blob_id, loc in repo.read_pack_header(pack_id, pack):
            sealed = pack[loc.offset : loc.offset + loc.length]
            repo.open_blob_at(blob_id, sealed, loc)
            frame = open_sealed(sealed, repo.enc_key, blob_id, f"blob {blob_id.hex()}")
            record = {
                "pack": pack_id,
                "id": blob_id.hex(),
                "type": loc.type,
                "offset": loc.offset,
                "length": loc.length,
                "rawLength": loc.raw_length,
                "framing": "zstd" if frame[0] == 1 else "stored",
            }
            out.write(json.dumps(record) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="format_reader.py",
        description="Independent reader of the fenice repository format, version 1",
    )
    parser.add_argument("repo", metavar="REPO_DIR", help="the repository's directory")
    unlock = parser.add_mutually_exclusive_group(required=True)
    unlock.add_argument("--password-file", help="the passphrase: first line of this file")
    unlock.add_argument("--recovery-key-file", help="an offline recovery key (fenice-recovery-1:…)")
    parser.add_argument(
        "--rebuild-index",
        action="store_true",
        help="ignore index/ and rebuild the index from the packs' headers",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the snapshots as JSON lines")
    cat = sub.add_parser("cat", help="write one file of a snapshot to stdout")
    cat.add_argument("snapshot", metavar="SNAPSHOT", help="id, unique id prefix, or `latest`")
    cat.add_argument("path", metavar="PATH", help="path in the snapshot, from the root node's name")
    sub.add_parser("verify", help="open every blob of every pack; non-zero exit on any failure")
    sub.add_parser("blobs", help="print every pack header entry and its framing as JSON lines")
    # Global options may also come after the command.
    args, rest = parser.parse_known_args(argv)
    for extra in rest:
        if extra == "--rebuild-index":
            args.rebuild_index = True
        else:
            parser.error(f"unrecognized argument: {extra}")

    try:
        repo = Repository(args.repo)
        if args.password_file is not None:
            repo.unlock_with_passphrase(read_first_line(args.password_file, "password file"))
        else:
            try:
                with open(args.recovery_key_file, encoding="utf-8") as f:
                    text = f.read()
            except OSError as err:
                raise FormatError(f"recovery key file {args.recovery_key_file}: {err.strerror}") from None
            repo.unlock_with_recovery_key(parse_recovery_key(text))
        if args.command in ("list", "cat"):
            if args.rebuild_index:
                repo.rebuild_index()
            else:
                repo.load_index()
        commands = {"list": cmd_list, "cat": cmd_cat, "verify": cmd_verify, "blobs": cmd_blobs}
        return commands[args.command](repo, args)
    except FormatError as err:
        print(f"format_reader: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
