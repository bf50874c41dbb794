//! The binary answers `-version` (also makes `cargo test` build the `vireo` binary that
//! the end-to-end tests in `testsuite/` run).

#[test]
fn version_names_vireo() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vireo"))
        .arg("-version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("vireo "), "{s}");
}
