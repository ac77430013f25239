// Present so that cargo reads the [build-dependencies] section: without a
// build script, the host-side features (bindgen's syn, regex, cc) would not
// be unified, and those are the ones that rebuild RocksDB's C++.
fn main() {}
