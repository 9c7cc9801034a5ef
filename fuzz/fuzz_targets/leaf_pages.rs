//! Any bytes as a database file whose leaf pages the salvage reads directly
//! (`journal::leaves`): rows or nothing, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("tidegate-fuzz-leaves-{}.db", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = tidegate::queue::sqlite::count_leaf_rows(&path);
    }
});
