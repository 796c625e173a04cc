//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding or editing a
//! migration would not rebuild the crate and binaries would run stale migrations.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
