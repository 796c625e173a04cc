//! (filled in by the domain move; see mod.rs)
