//! The receiver's side of signatures, as docs/ACTIONS.md shows it: the
//! documented Python verifier accepts what Beacon signs and refuses a body
//! changed by one byte.

use beacon_actions::signature::sign;

use super::support::SECRET;

/// The first `python` block of docs/ACTIONS.md.
fn documented_verifier() -> String {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ACTIONS.md"),
    )
    .expect("docs/ACTIONS.md");
    let start = doc.find("```python\n").expect("a Python example") + "```python\n".len();
    let len = doc[start..].find("```").expect("its end");
    doc[start..start + len].to_owned()
}

#[test]
fn the_documented_python_verifier_accepts_beacon_signatures() {
    let python = std::env::var_os("BEACON_TEST_PYTHON").unwrap_or_else(|| "python3".into());
    let body = r#"{"id":"r/1","data":{"plan":"pro"}}"#;
    let header = sign(
        SECRET.as_bytes(),
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    );
    let script = format!(
        "{}\nimport sys\nh, b, s = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()\nprint(verify(h, b, s), verify(h, b + b' ', s))\n",
        documented_verifier()
    );
    let output = std::process::Command::new(&python)
        .args(["-c", &script, &header, body, SECRET])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python:?}: {e}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "True False");
}
