//! The snapshot archive an operator saves and restores (`/v1/snapshot`, `consulate snapshot
//! save|restore|inspect`): Consul's layout, a gzipped tar of `meta.json` (ID, size, index,
//! term, version), `state.bin` (the DC's [`Tables`], MessagePack) and `SHA256SUMS` over both.
//! Pure: bytes in, bytes out. Reading verifies everything before anything is decoded, so a
//! truncated, corrupted or foreign file is refused with the reason and restores nothing.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::Tables;

/// What `meta.json` says of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveMeta {
    /// `<term>-<index>-<unix ms>`, as Consul's.
    #[serde(rename = "ID")]
    pub id: String,
    /// Bytes of `state.bin`.
    pub size: u64,
    /// The state's index when it was saved (what `X-Consul-Index` said).
    pub index: u64,
    /// The Raft term of the last entry it holds.
    pub term: u64,
    /// The archive layout's version.
    pub version: u32,
    /// Which program and encoding made `state.bin` (a Consul archive has none).
    pub format: String,
    /// The DC it was saved in.
    pub datacenter: String,
}

/// This build's archive version and state encoding.
const VERSION: u32 = 1;
const FORMAT: &str = "consulate-state-v1";
const META: &str = "meta.json";
const STATE: &str = "state.bin";
const SUMS: &str = "SHA256SUMS";
/// The largest `state.bin` read back (what an agent accepts in one restore).
pub const MAX_STATE: u64 = 1 << 30;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a gzipped tar, or cut short.
    #[error("not a snapshot archive, or a truncated one: {0}")]
    Unreadable(String),
    /// A file the layout needs is absent.
    #[error("snapshot archive has no {0}")]
    Missing(&'static str),
    /// A file's checksum does not match `SHA256SUMS`.
    #[error("snapshot archive is corrupted: the checksum of {0} does not match SHA256SUMS")]
    Checksum(&'static str),
    /// Made by another program or version.
    #[error("snapshot archive was made by {0}, not by this version of consulate")]
    Foreign(String),
    /// `state.bin` does not decode.
    #[error("snapshot archive holds a state that does not decode: {0}")]
    Decode(String),
}

/// Writes the archive of `tables` described by `meta` (its `size`, `version` and `format`
/// are filled in here). Fast compression: saving is on an operator's critical path.
pub fn write(mut meta: ArchiveMeta, tables: &Tables) -> std::io::Result<Vec<u8>> {
    let state = rmp_serde::to_vec_named(tables).map_err(std::io::Error::other)?;
    meta.size = state.len() as u64;
    meta.version = VERSION;
    meta.format = FORMAT.into();
    let meta_json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
    let sums = format!(
        "{}  {META}\n{}  {STATE}\n",
        sha256(&meta_json),
        sha256(&state)
    );
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in [
        (META, meta_json.as_slice()),
        (STATE, &state),
        (SUMS, sums.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data)?;
    }
    tar.into_inner()?.finish()
}

/// Reads an archive, verifying every checksum before its state is decoded.
pub fn read(archive: &[u8]) -> Result<(ArchiveMeta, Tables), ArchiveError> {
    let (meta, state) = verified(archive)?;
    let tables = rmp_serde::from_slice(&state).map_err(|e| ArchiveError::Decode(e.to_string()))?;
    Ok((meta, tables))
}

/// Verifies an archive (every checksum, the gzip trailer, the format and version) without
/// decoding its state: what an agent checks before a restore goes to Raft, where every
/// server decodes it.
pub fn verify(archive: &[u8]) -> Result<ArchiveMeta, ArchiveError> {
    verified(archive).map(|(meta, _)| meta)
}

/// The metadata of a verified archive, and the bytes of its state.
fn verified(archive: &[u8]) -> Result<(ArchiveMeta, Vec<u8>), ArchiveError> {
    let unreadable = |e: std::io::Error| ArchiveError::Unreadable(e.to_string());
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let (mut meta, mut state, mut sums) = (None, None, None);
    for entry in tar.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry
            .path()
            .map_err(unreadable)?
            .to_string_lossy()
            .into_owned();
        let slot = match name.as_str() {
            META => &mut meta,
            STATE => &mut state,
            SUMS => &mut sums,
            _ => continue,
        };
        let mut data = Vec::new();
        entry
            .take(MAX_STATE + 1)
            .read_to_end(&mut data)
            .map_err(unreadable)?;
        if data.len() as u64 > MAX_STATE {
            return Err(ArchiveError::Unreadable(format!(
                "{name} is larger than {MAX_STATE} bytes"
            )));
        }
        *slot = Some(data);
    }
    // The tar ends before the gzip stream does: read that to its end, so that its checksum
    // and length (the last 8 bytes) are verified too.
    std::io::copy(&mut tar.into_inner(), &mut std::io::sink()).map_err(unreadable)?;
    let meta_json = meta.ok_or(ArchiveError::Missing(META))?;
    let state = state.ok_or(ArchiveError::Missing(STATE))?;
    let sums = String::from_utf8(sums.ok_or(ArchiveError::Missing(SUMS))?)
        .map_err(|_| ArchiveError::Checksum(SUMS))?;
    for (name, data) in [(META, &meta_json), (STATE, &state)] {
        let listed = sums
            .lines()
            .find_map(|l| l.strip_suffix(name)?.strip_suffix("  "))
            .ok_or(ArchiveError::Checksum(name))?;
        if listed != sha256(data) {
            return Err(ArchiveError::Checksum(name));
        }
    }
    let meta: ArchiveMeta = serde_json::from_slice(&meta_json)
        .map_err(|_| ArchiveError::Foreign("another program (its meta.json differs)".into()))?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(ArchiveError::Foreign(format!(
            "{} version {}",
            meta.format, meta.version
        )));
    }
    Ok((meta, state))
}

/// Entries per table, by the table's name.
pub type TableCounts = Vec<(&'static str, usize)>;

/// What `consulate snapshot inspect` shows: the metadata and, per table, its entries.
pub fn inspect(archive: &[u8]) -> Result<(ArchiveMeta, TableCounts), ArchiveError> {
    let (meta, tables) = read(archive)?;
    Ok((meta, tables.counts()))
}

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, State};

    fn sample() -> State {
        let mut s = State::default();
        let now = std::time::Instant::now();
        for i in 0..50 {
            s.apply(
                i + 1,
                Command::KvSet {
                    key: format!("k/{i}"),
                    value: vec![b'x'; 100].into(),
                    flags: i,
                },
                now,
            );
        }
        s
    }

    fn meta() -> ArchiveMeta {
        ArchiveMeta {
            id: "1-50-0".into(),
            size: 0,
            index: 50,
            term: 1,
            version: 0,
            format: String::new(),
            datacenter: "dc1".into(),
        }
    }

    #[test]
    fn an_archive_reads_back_what_was_saved() {
        let s = sample();
        let bytes = write(meta(), s.tables()).unwrap();
        let (m, tables) = read(&bytes).unwrap();
        assert_eq!(&tables, s.tables());
        assert_eq!((m.index, m.term, m.version), (50, 1, VERSION));
        let (_, counts) = inspect(&bytes).unwrap();
        assert!(counts.contains(&("KV", 50)), "{counts:?}");
    }

    #[test]
    fn truncated_corrupted_and_foreign_archives_are_refused() {
        let bytes = write(meta(), sample().tables()).unwrap();
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Flip a byte inside state.bin (after decompression): rebuild with a bad sum.
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        let at = raw
            .windows(3)
            .position(|w| w == b"k/7")
            .expect("a key in the tar");
        raw[at + 2] = b'8';
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let corrupted = gz.finish().unwrap();
        assert!(matches!(
            read(&corrupted),
            Err(ArchiveError::Checksum("state.bin"))
        ));
        assert!(matches!(
            read(b"not an archive at all"),
            Err(ArchiveError::Unreadable(_))
        ));
        let other = {
            let state = b"consul's own state".to_vec();
            let meta_json = br#"{"Version":1,"ID":"2-5-1","Index":5,"Term":2,"Size":18}"#.to_vec();
            let sums = format!(
                "{}  {META}\n{}  {STATE}\n",
                sha256(&meta_json),
                sha256(&state)
            );
            let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            ));
            for (name, data) in [(META, meta_json), (STATE, state), (SUMS, sums.into_bytes())] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_cksum();
                tar.append_data(&mut h, name, data.as_slice()).unwrap();
            }
            tar.into_inner().unwrap().finish().unwrap()
        };
        assert!(matches!(read(&other), Err(ArchiveError::Foreign(_))));
    }
}
