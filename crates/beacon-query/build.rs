//! Rebuild when a dashboard file is added, changed or removed: the embedded
//! files are read at compile time, and a new file is not otherwise noticed.

fn main() {
    println!("cargo:rerun-if-changed=dashboard");
}
