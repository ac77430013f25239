//! The worked examples in docs/protocol.md are these messages' frames, so the
//! document cannot drift from the code. After a deliberate protocol change,
//! regenerate them with
//! `ACCT_UPDATE_PROTOCOL_EXAMPLES=1 cargo test -p wire --test protocol_examples`.

mod support;

use std::path::PathBuf;

use bytes::Bytes;
use wire::Message;

const BYTES_PER_LINE: usize = 16;

fn document_path() -> PathBuf {
    manifest_dir().join("../docs/protocol.md")
}

fn to_hex_lines(frame: &[u8]) -> String {
    frame
        .chunks(BYTES_PER_LINE)
        .map(|line| {
            line.iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn from_hex_lines(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("not hex: {pair}")))
        .collect()
}

/// The text between `<!-- example:NAME -->` + "```text" and the closing fence.
fn block_range(document: &str, name: &str) -> std::ops::Range<usize> {
    let marker = format!("<!-- example:{name} -->");
    let start = document
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/protocol.md lacks {marker}"));
    let fence = "```text\n";
    let open = start + document[start..].find(fence).unwrap() + fence.len();
    let close = open + document[open..].find("```").unwrap();
    open..close
}

#[test]
fn protocol_document_examples_match_the_codec() {
    let path = document_path();
    let mut document = std::fs::read_to_string(&path).unwrap();
    let update = std::env::var_os("ACCT_UPDATE_PROTOCOL_EXAMPLES").is_some();
    for (name, message) in support::examples() {
        let frame = message.to_frame();
        let range = block_range(&document, name);
        if update {
            document.replace_range(range, &format!("{}\n", to_hex_lines(&frame)));
            continue;
        }
        let documented = from_hex_lines(&document[range]);
        assert_eq!(
            hex::encode(&documented),
            hex::encode(&frame),
            "example {name} in docs/protocol.md differs from the codec; regenerate with ACCT_UPDATE_PROTOCOL_EXAMPLES=1"
        );
        // The documented bytes decode to the documented message.
        assert_eq!(Message::decode(Bytes::from(documented)).unwrap(), message, "{name}");
    }
    if update {
        std::fs::write(&path, document).unwrap();
    }
}

/// This crate's folder, read when the test runs (cargo sets it for the test
/// process): a binary reused from a clone at another path still finds the
/// files of the checkout it runs in.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
