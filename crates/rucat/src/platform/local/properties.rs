//! The engine's Spark properties file (`engine.conf`, given to `spark-submit
//! --properties-file`): Spark's `spark-defaults.conf`, then the engine's configs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::engine::EngineId;

/// The text of Spark's `spark-defaults.conf`, if any: a properties file replaces it, so its
/// content goes first into the engine's.
pub(super) fn spark_defaults(spark_home: &Path) -> String {
    let conf_dir = std::env::var_os("SPARK_CONF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| spark_home.join("conf"));
    fs::read_to_string(conf_dir.join("spark-defaults.conf")).unwrap_or_default()
}

/// The engine's properties file: Spark's defaults, then the engine's configs (later keys win).
pub(super) fn properties_file(
    id: &EngineId,
    defaults: &str,
    configs: &BTreeMap<String, String>,
) -> String {
    let mut out = format!("# Written by Rucat for engine {id}.\n");
    if !defaults.is_empty() {
        out.push_str("# From spark-defaults.conf:\n");
        out.push_str(defaults);
        if !defaults.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str("# The engine's configs:\n");
    for (key, value) in configs {
        out.push_str(&escape_property(key, true));
        out.push('=');
        out.push_str(&escape_property(value, false));
        out.push('\n');
    }
    out
}

/// Escapes a key or value for a Java properties file (read by `Properties.load`).
fn escape_property(text: &str, is_key: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            ' ' if is_key || i == 0 => out.push_str("\\ "),
            '=' | ':' | '#' | '!' if is_key || i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_escaped_for_java() {
        assert_eq!(
            escape_property("spark.executor.memory", true),
            "spark.executor.memory"
        );
        assert_eq!(escape_property("2g", false), "2g");
        assert_eq!(escape_property(" a=b:c\\d", false), "\\ a=b:c\\\\d");
        assert_eq!(escape_property("a b=c", true), "a\\ b\\=c");
        assert_eq!(escape_property("é", false), "\\u00e9");
        assert_eq!(escape_property("😀", false), "\\ud83d\\ude00");
        let id = EngineId::generate();
        let configs = BTreeMap::from([("spark.x".to_owned(), "=1".to_owned())]);
        let text = properties_file(&id, "spark.a 1", &configs);
        assert!(
            text.contains("spark.a 1\n# The engine's configs:\nspark.x=\\=1\n"),
            "{text}"
        );
    }
}
