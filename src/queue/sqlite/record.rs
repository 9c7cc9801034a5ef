//! A row's record as the journal writes and checks it: a CRC-32 over
//! everything a delivery sends (method, path, headers, body, with field
//! separators so that moving bytes between fields changes the sum), and
//! the headers as JSON.

/// CRC-32 over everything a delivery sends, with field separators so that
/// moving bytes between fields changes the sum.
pub fn checksum(method: &str, path: &str, headers: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(method.as_bytes());
    h.update(&[0]);
    h.update(path.as_bytes());
    h.update(&[0]);
    h.update(headers);
    h.update(&[0]);
    h.update(body);
    h.finalize()
}

pub fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    serde_json::to_vec(headers).unwrap_or_else(|_| b"[]".to_vec())
}

/// Checks one stored record against its checksum and decodes its headers:
/// what the journal does with every row before it is delivered. `None`
/// means the record is corrupt and must be quarantined.
pub fn decode_record(method: &str, path: &str, headers: &[u8], body: &[u8], crc: u32) -> Option<Vec<(String, String)>> {
    if checksum(method, path, headers, body) != crc {
        return None;
    }
    decode_headers(headers)
}

pub fn decode_headers(raw: &[u8]) -> Option<Vec<(String, String)>> {
    serde_json::from_slice(raw).ok()
}
