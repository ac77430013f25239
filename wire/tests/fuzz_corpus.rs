//! Every input in the fuzz corpus (seeds and anything the fuzzer kept or
//! found) decodes without panicking, and what decodes re-encodes unchanged.

use std::path::PathBuf;

use bytes::Bytes;
use wire::Message;

#[test]
fn fuzz_corpus_is_a_regression_suite() {
    let folder = manifest_dir().join("../fuzz/corpus/decode");
    let mut decoded = 0usize;
    let mut files = 0usize;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        if let Ok(message) = Message::decode(Bytes::from(bytes.clone())) {
            assert_eq!(message.to_frame().as_ref(), bytes.as_slice(), "{}", path.display());
            decoded += 1;
        }
    }
    // The committed seeds include one valid frame of every message type.
    assert!(files >= 12 && decoded >= 12, "{files} files, {decoded} decoded");
}

/// This crate's folder, read when the test runs (cargo sets it for the test
/// process): a binary reused from a clone at another path still finds the
/// files of the checkout it runs in.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
