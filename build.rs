// The binary embeds templates/ and images/ (src/assets.rs): rebuild when a file there is added,
// removed or changed, not only when an already-embedded file changes.
fn main() {
    println!("cargo:rerun-if-changed=templates");
    println!("cargo:rerun-if-changed=images");
}
