//! Signed, hash-chained audit stream.
