CREATE TABLE IF NOT EXISTS recordings (
    recording_id    TEXT PRIMARY KEY,           -- 32 hex digits, as in the file header
    path            TEXT NOT NULL,
    key_id          TEXT NOT NULL,              -- data-key id, as in the file header
    kek_id          TEXT,                       -- KEK that wrapped it; NULL once shredded
    wrapped_key     BLOB,                       -- RFC 3394 wrapped data key; NULL once shredded
    created_at      REAL NOT NULL,
    closed_at       REAL,
    state           TEXT NOT NULL DEFAULT 'recording'
                    CHECK (state IN ('recording', 'closed', 'incomplete', 'shredded')),
    retention_class TEXT NOT NULL,
    expires_at      REAL NOT NULL,
    caller_number   TEXT,                       -- personal data: mask on output, erased on shred
    legal_hold      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recordings_expiry ON recordings (state, expires_at);
CREATE INDEX IF NOT EXISTS recordings_caller ON recordings (caller_number);

CREATE TABLE IF NOT EXISTS legal_holds (
    recording_id    TEXT PRIMARY KEY REFERENCES recordings (recording_id),
    requested_by    TEXT NOT NULL,
    requested_at    REAL NOT NULL,
    reason          TEXT NOT NULL,
    approved_by     TEXT,
    approved_at     REAL
);

CREATE TABLE IF NOT EXISTS shred_log (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id    TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    reason          TEXT NOT NULL,              -- expired | erasure | manual
    actor           TEXT NOT NULL,
    shredded_at     REAL NOT NULL,
    file_deleted    INTEGER NOT NULL
);
