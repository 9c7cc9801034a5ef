//! Any bytes as a stored record (method, path, headers blob, body, CRC):
//! decoded or refused as corrupt, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let crc = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let split = data[4] as usize % (data.len() - 4) + 4;
    let (headers, body) = data[5..].split_at((split - 4).min(data.len() - 5));
    let method = String::from_utf8_lossy(&body[..body.len().min(8)]);
    let _ = tidegate::queue::sqlite::decode_record(&method, "/p", headers, body, crc);
    // A record whose checksum is right still decodes or is refused cleanly.
    let right = tidegate::queue::sqlite::checksum(&method, "/p", headers, body);
    let _ = tidegate::queue::sqlite::decode_record(&method, "/p", headers, body, right);
});
