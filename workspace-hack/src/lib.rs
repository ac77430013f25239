//! No code: this package exists for its `Cargo.toml`. Every workspace member
//! depends on it, and it names the features of the shared dependencies that
//! the whole workspace needs, so that any selection of packages (`-p acct`,
//! `-p acct -p loadgen`, `--workspace`, tests or not) resolves them the same
//! way and cargo builds RocksDB's C++ once per profile. `cargo hakari
//! generate` writes it; CI checks that it is current (`.config/hakari.toml`).
