//! `localize` against the case table Python's `xfd.nodes.localize` is checked against too
//! (`tests/localize_cases.json`, read by `tests/test_one_home.py`): both must give the same answers.

use std::path::{Path, PathBuf};

use xfd_core::engine::localize;

#[test]
fn localize_gives_the_answers_python_gives() {
    let table = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/localize_cases.json");
    let table: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(table).unwrap()).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() > 10);
    for case in cases {
        let (root, destination) = (case["root"].as_str().unwrap(), case["destination"].as_str().unwrap());
        let got = localize(Path::new(root), destination).ok();
        let expected = case["path"].as_str().map(PathBuf::from);
        assert_eq!(got, expected, "localize({root:?}, {destination:?})");
    }
}
