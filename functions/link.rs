//! The build script of every Lambda function crate (`build = "../link.rs"`). A function whose
//! size build aborts on a panic also sets `PAI_LINK_WITHOUT_UNWIND_TABLES` there (its
//! `[package.metadata.lambda.build]`, checked by tests/tests/lambda_features.rs): its binary is
//! then linked without unwind tables (`.eh_frame`, `.eh_frame_hdr`: 1.2–1.5 MiB), which nothing
//! in it reads: an aborting panic unwinds nothing, and still prints its message and place.
//! `-C force-unwind-tables=no` cannot do this: fat LTO takes std's bitcode, built to unwind,
//! and the merged module keeps unwind tables for every function. Any other build (`pai`, the
//! tests, a function built to unwind) is linked as usual: there they are what a panic needs.

fn main() {
    const SWITCH: &str = "PAI_LINK_WITHOUT_UNWIND_TABLES";
    println!("cargo::rerun-if-env-changed={SWITCH}");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = format!("{dir}/../without-unwind-tables.ld");
    println!("cargo::rerun-if-changed={script}");
    if std::env::var_os(SWITCH).is_some_and(|v| v == "1") {
        println!("cargo::rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
        println!("cargo::rustc-link-arg-bins=-Wl,-T,{script}");
    }
}
