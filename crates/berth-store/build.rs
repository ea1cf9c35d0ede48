//! `sqlx::migrate!` embeds `migrations/` when this crate compiles; a migration file added later
//! must make it compile again.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
