// Rebuild `pai` when the bundled samples change (they are compiled in with include_dir).
fn main() {
    println!("cargo:rerun-if-changed=samples");
}
