"""Key hierarchy: customer KEK -> scope key versions -> per-record DEKs (made in Rust)."""
