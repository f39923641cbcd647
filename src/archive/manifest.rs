//! The archive's manifest: one line per sealed segment, chained by SHA-256, so that editing,
//! removing, reordering, truncating or inserting a segment, or editing the manifest itself,
//! is detected by `auditwatch verify`. Each entry's hash covers the previous entry's hash,
//! so the newest hash (the chain head) vouches for the whole history; publishing it elsewhere
//! (`verify --expect-head`) also catches a manifest rolled back to an earlier state.
//!
//! ```text
//! {"seq":0,"file":"segment-00000000.parquet","bytes":17399409,"events":300000,"sha256":"…","prev":"000…","hash":"…"}
//! ```

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name inside the archive directory.
pub const MANIFEST: &str = "manifest.jsonl";

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub file: String,
    pub bytes: u64,
    pub events: u64,
    /// SHA-256 of the segment file, hex.
    pub sha256: String,
    /// The previous entry's `hash` ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 over this entry's other fields, hex.
    pub hash: String,
    /// The signing key's id ([`Signer::id`]), when the archive is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Ed25519 signature of `hash` (its hex text), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// A retention record rather than a segment: segments up to this sequence number were
    /// removed on purpose (by age or size). Chained and signed like a segment's entry, so a
    /// deletion cannot pass for retention without the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_through: Option<u64>,
}

/// An Ed25519 key that signs manifest entries. Its id is the first 16 hex digits of the
/// SHA-256 of its public key; rotating keys is starting to sign with a new one (old entries
/// keep their signatures; `verify` accepts every key in its trusted list).
pub struct Signer {
    key: ring::signature::Ed25519KeyPair,
    id: String,
}

/// A public key's id.
pub fn key_id(public: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, public).as_ref())[..16].to_owned()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Signer {
    /// Reads a PKCS#8 Ed25519 key file (as `auditwatch keygen` writes it).
    pub fn from_file(path: &Path) -> Result<Signer, String> {
        let der = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|e| format!("{}: not a PKCS#8 Ed25519 key: {e}", path.display()))?;
        let id = key_id(ring::signature::KeyPair::public_key(&key).as_ref());
        Ok(Signer { key, id })
    }

    /// A new key: its PKCS#8 bytes, for a key file.
    pub fn generate() -> Result<Vec<u8>, String> {
        let rng = ring::rand::SystemRandom::new();
        ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|e| format!("generating a key: {e}"))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The trusted-keys line for this key: `ID PUBLIC_KEY_HEX`.
    pub fn trusted_line(&self) -> String {
        format!(
            "{} {}",
            self.id,
            hex(ring::signature::KeyPair::public_key(&self.key).as_ref())
        )
    }

    /// Signs an entry (its `hash`).
    pub fn sign(&self, entry: &mut Entry) {
        entry.key_id = Some(self.id.clone());
        entry.sig = Some(hex(self.key.sign(entry.hash.as_bytes()).as_ref()));
    }
}

/// Public keys `verify` trusts, by id.
pub type TrustedKeys = std::collections::HashMap<String, Vec<u8>>;

/// Reads trusted keys: a file of `ID PUBLIC_KEY_HEX` lines (`#` comments).
pub fn read_trusted(path: &Path) -> Result<TrustedKeys, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = TrustedKeys::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("{}:{}: expected `ID PUBLIC_KEY_HEX`", path.display(), i + 1);
        let (id, public) = line.split_once(' ').ok_or_else(bad)?;
        let public = unhex(public.trim())
            .filter(|k| k.len() == 32)
            .ok_or_else(bad)?;
        if key_id(&public) != id {
            return Err(format!(
                "{}:{}: the id {id} is not this public key's ({})",
                path.display(),
                i + 1,
                key_id(&public)
            ));
        }
        keys.insert(id.to_owned(), public);
    }
    Ok(keys)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of a file, hex, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

impl Entry {
    /// The hash this entry must carry: over every other field, each length-prefixed.
    pub fn expected_hash(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let seq = self.seq.to_le_bytes();
        let bytes = self.bytes.to_le_bytes();
        let events = self.events.to_le_bytes();
        for part in [
            b"auditwatch-manifest-v1".as_slice(),
            &seq,
            self.file.as_bytes(),
            &bytes,
            &events,
            self.sha256.as_bytes(),
            self.prev.as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        // Absent from segment entries, so their hashes are what they always were.
        if let Some(through) = self.retired_through {
            let through = through.to_le_bytes();
            for part in [b"retired-through".as_slice(), &through] {
                ctx.update(&(part.len() as u64).to_le_bytes());
                ctx.update(part);
            }
        }
        hex(ctx.finish().as_ref())
    }

    /// A new entry chained after `prev`.
    pub fn new(
        seq: u64,
        file: String,
        bytes: u64,
        events: u64,
        sha256: String,
        prev: &str,
    ) -> Entry {
        let mut e = Entry {
            seq,
            file,
            bytes,
            events,
            sha256,
            prev: prev.to_owned(),
            hash: String::new(),
            key_id: None,
            sig: None,
            retired_through: None,
        };
        e.hash = e.expected_hash();
        e
    }

    /// A retention record chained after `prev`: segments up to `through` are removed.
    pub fn retirement(through: u64, prev: &str) -> Entry {
        let mut e = Entry::new(through, String::new(), 0, 0, String::new(), prev);
        e.retired_through = Some(through);
        e.hash = e.expected_hash();
        e
    }
}

/// Reads the manifest's entries; a line that does not parse is an error naming it.
pub fn read(dir: &Path) -> Result<Vec<Entry>, String> {
    let path = dir.join(MANIFEST);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut entries = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: Entry = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Appends an entry and fsyncs the manifest.
pub fn append(dir: &Path, entry: &Entry) -> std::io::Result<()> {
    let path = dir.join(MANIFEST);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
    writeln!(file, "{line}")?;
    file.sync_all()
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every link holds; the chain head and the number of segments.
    Intact { head: String, segments: usize },
    /// The first broken link: which segment or manifest line, and why.
    Tampered { at: String, reason: String },
    /// The archive cannot be read at all.
    Unreadable(String),
}

/// Checks every link of the archive in `dir`: the manifest's chain, each segment's size and
/// hash, that no segment is missing or unlisted, and (when given) that the chain reaches the
/// head published elsewhere.
pub fn verify(dir: &Path, expect_head: Option<&str>, trusted: Option<&TrustedKeys>) -> Verdict {
    if !dir.is_dir() {
        return Verdict::Unreadable(format!("{}: not a directory", dir.display()));
    }
    if !dir.join(MANIFEST).exists() {
        return Verdict::Unreadable(format!("{}: no {MANIFEST}", dir.display()));
    }
    let entries = match read(dir) {
        Ok(e) => e,
        Err(e) => {
            return Verdict::Tampered {
                at: MANIFEST.into(),
                reason: format!("a line that is not a manifest entry: {e}"),
            };
        }
    };
    let tampered = |at: &str, reason: String| Verdict::Tampered {
        at: at.to_owned(),
        reason,
    };
    let mut prev = GENESIS.to_owned();
    let mut seen_head = expect_head.is_none();
    // The next segment's sequence number, and the newest retention record's.
    let mut next = 0u64;
    let mut retired: Option<u64> = None;
    // A segment may be gone when a retention record later in the chain covers it (each
    // record is checked in its place below: it can only retire segments listed before it).
    let retired_in_chain = entries.iter().filter_map(|e| e.retired_through).max();
    let mut segments = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let at = match e.retired_through {
            Some(r) => format!("{MANIFEST} line {} (retention through segment {r})", i + 1),
            None => format!("{MANIFEST} line {} ({})", i + 1, e.file),
        };
        if let Some(through) = e.retired_through {
            if through >= next || retired.is_some_and(|r| through <= r) {
                return tampered(
                    &at,
                    format!(
                        "retires through segment {through}, which it cannot: the record was forged"
                    ),
                );
            }
        } else if e.seq != next {
            return tampered(
                &at,
                format!(
                    "segment {} where segment {next} belongs: removed or reordered",
                    e.seq
                ),
            );
        }
        if e.retired_through.is_none() && e.file != format!("segment-{:08}.parquet", e.seq) {
            return tampered(&at, format!("names {:?}, not its sequence's file", e.file));
        }
        if e.prev != prev {
            return tampered(&at, "does not chain to the entry before it".into());
        }
        if e.hash != e.expected_hash() {
            return tampered(
                &at,
                "its hash does not match its contents: the entry was edited".into(),
            );
        }
        if let Some(trusted) = trusted {
            let (Some(id), Some(sig)) = (&e.key_id, &e.sig) else {
                return tampered(
                    &at,
                    "not signed, and --trusted-keys requires signatures".into(),
                );
            };
            let Some(public) = trusted.get(id) else {
                return tampered(
                    &at,
                    format!(
                        "signed by key {id}, which is not a trusted key: the chain was re-signed"
                    ),
                );
            };
            let valid = unhex(sig).is_some_and(|sig| {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
                    .verify(e.hash.as_bytes(), &sig)
                    .is_ok()
            });
            if !valid {
                return tampered(&at, format!("its signature by key {id} does not verify"));
            }
        }
        if let Some(through) = e.retired_through {
            retired = Some(through);
            if expect_head == Some(e.hash.as_str()) {
                seen_head = true;
            }
            prev = e.hash.clone();
            continue;
        }
        next += 1;
        segments += 1;
        let path: PathBuf = dir.join(&e.file);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(_) if retired_in_chain.is_some_and(|r| e.seq <= r) => {
                // A retired segment: its entry still links the chain; the file is checked
                // when it is still there (a crash between the record and the removal).
                segments -= 1;
                if expect_head == Some(e.hash.as_str()) {
                    seen_head = true;
                }
                prev = e.hash.clone();
                continue;
            }
            Err(_) => {
                return tampered(
                    &e.file,
                    "listed in the manifest but missing: deleted".into(),
                );
            }
        };
        if meta.len() != e.bytes {
            return tampered(
                &e.file,
                format!(
                    "{} bytes, the manifest says {}: truncated or extended",
                    meta.len(),
                    e.bytes
                ),
            );
        }
        match file_sha256(&path) {
            Ok(h) if h == e.sha256 => {}
            Ok(_) => {
                return tampered(
                    &e.file,
                    "its SHA-256 is not the manifest's: the file was edited or replaced".into(),
                );
            }
            Err(err) => return Verdict::Unreadable(format!("{}: {err}", path.display())),
        }
        if expect_head == Some(e.hash.as_str()) {
            seen_head = true;
        }
        prev = e.hash.clone();
    }
    if !seen_head {
        return tampered(
            MANIFEST,
            format!(
                "the published head {} is not in the chain: the manifest was rolled back or rewritten",
                expect_head.unwrap_or_default()
            ),
        );
    }
    // A sealed segment the manifest does not list was inserted (or the manifest cut back);
    // any other file is not the archive's (only the segment in progress may be there).
    let listed: std::collections::HashSet<&str> = entries.iter().map(|e| e.file.as_str()).collect();
    let mut unlisted: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n != MANIFEST
                        && !listed.contains(n.as_str())
                        && !(n.starts_with("segment-") && n.ends_with(".parquet.partial"))
                })
                .collect()
        })
        .unwrap_or_default();
    unlisted.sort();
    if let Some(first) = unlisted.first() {
        let reason = if first.ends_with(".parquet") {
            "a segment the manifest does not list: inserted"
        } else {
            "a file the archive never writes: foreign"
        };
        return tampered(first, reason.into());
    }
    Verdict::Intact {
        head: prev,
        segments,
    }
}
